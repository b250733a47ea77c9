package proc_test

import (
	"errors"
	"fmt"
	"net"
	"net/http"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/mana/apigw/services/testenv/proc"
)

func sh(t *testing.T, name, script string) proc.Spec {
	t.Helper()
	bin, err := exec.LookPath("sh")
	if err != nil {
		t.Fatal(err)
	}
	return proc.Spec{Name: name, Bin: bin, Args: []string{"-c", script}, Env: []string{"GREETING=hello"},
		Log: filepath.Join(t.TempDir(), name+".log")}
}

func TestStopAndExit(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name     string
		script   string
		wait     time.Duration
		withStop func(*testing.T, error)
	}{
		{"exits on SIGTERM", `trap 'exit 0' TERM; echo "$GREETING"; while :; do sleep 0.05; done`, 30 * time.Second, func(t *testing.T, err error) {
			if err != nil {
				t.Errorf("stop: %v, want nil", err)
			}
		}},
		{"ignores SIGTERM", `trap '' TERM; echo "$GREETING"; while :; do sleep 0.05; done`, 200 * time.Millisecond, func(t *testing.T, err error) {
			if !errors.Is(err, proc.ErrKilled) {
				t.Errorf("stop: %v, want ErrKilled", err)
			}
		}},
		{"already failed", `echo "$GREETING"; exit 3`, 30 * time.Second, func(t *testing.T, err error) {
			var ee *exec.ExitError
			if !errors.As(err, &ee) || ee.ExitCode() != 3 {
				t.Errorf("stop: %v, want exit status 3", err)
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			p, err := proc.Start(sh(t, "p", tc.script))
			if err != nil {
				t.Fatal(err)
			}
			// The trap is set before the greeting is written, so a signal
			// sent once it is out meets the trap.
			for !strings.Contains(string(p.Log()), "hello") {
				select {
				case <-t.Context().Done():
					t.Fatal(t.Context().Err())
				case <-time.After(10 * time.Millisecond):
				}
			}
			if strings.HasSuffix(tc.script, "exit 3") {
				<-p.Done()
			}
			tc.withStop(t, p.Stop(tc.wait))
			if ended, _ := p.Exited(); !ended {
				t.Error("running after Stop")
			}
			start := time.Now()
			_ = p.Stop(time.Minute) // again: at once
			if d := time.Since(start); d > 5*time.Second {
				t.Errorf("a second Stop took %v", d)
			}
		})
	}
}

func TestWaitReady(t *testing.T) {
	t.Parallel()
	t.Run("answers", func(t *testing.T) {
		t.Parallel()
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		srv := &http.Server{Handler: http.HandlerFunc(func(http.ResponseWriter, *http.Request) {})}
		go func() { _ = srv.Serve(l) }()
		t.Cleanup(func() { _ = srv.Close() })
		p, err := proc.Start(sh(t, "p", "sleep 60"))
		if err != nil {
			t.Fatal(err)
		}
		defer p.Kill()
		if err := p.WaitReady(t.Context(), fmt.Sprintf("http://%s/", l.Addr()), 30*time.Second, nil); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("exits first", func(t *testing.T) {
		t.Parallel()
		port, err := proc.FreePort()
		if err != nil {
			t.Fatal(err)
		}
		p, err := proc.Start(sh(t, "p", "echo bind failed; exit 1"))
		if err != nil {
			t.Fatal(err)
		}
		err = p.WaitReady(t.Context(), fmt.Sprintf("http://127.0.0.1:%d/", port), time.Minute, nil)
		if err == nil || !strings.Contains(err.Error(), "exited") || !strings.Contains(err.Error(), "bind failed") {
			t.Fatalf("err %v, want the exit and the log's tail", err)
		}
	})
	t.Run("check gives up", func(t *testing.T) {
		t.Parallel()
		port, err := proc.FreePort()
		if err != nil {
			t.Fatal(err)
		}
		p, err := proc.Start(sh(t, "p", "echo address already in use; sleep 60"))
		if err != nil {
			t.Fatal(err)
		}
		defer p.Kill()
		errTaken := errors.New("taken")
		err = p.WaitReady(t.Context(), fmt.Sprintf("http://127.0.0.1:%d/", port), time.Minute, func() error {
			if strings.Contains(string(p.Log()), "already in use") {
				return errTaken
			}
			return nil
		})
		if !errors.Is(err, errTaken) {
			t.Fatalf("err %v, want the check's error", err)
		}
	})
}

func TestStatus(t *testing.T) {
	t.Parallel()
	p, err := proc.Start(sh(t, "p", "sleep 60"))
	if err != nil {
		t.Fatal(err)
	}
	defer p.Kill()
	if rss := proc.Status(p.Pid(), "VmRSS"); rss <= 0 {
		t.Errorf("VmRSS %d", rss)
	}
	if v := proc.Status(p.Pid(), "NoSuchField"); v != 0 {
		t.Errorf("a missing field reads %d", v)
	}
}
