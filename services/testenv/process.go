package testenv

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// Process is a binary under test, started with its own environment. Its
// output goes to a log file that is printed if the test fails.
type Process struct {
	t     testing.TB
	Name  string
	bin   string
	args  []string
	env   []string
	ready string
	log   string
	mu    sync.Mutex
	cmd   *exec.Cmd
	done  chan struct{}
}

// StartProcess starts bin with env (added to the current environment) and
// waits until readyURL answers 200 (skipped when empty). It is stopped
// (SIGTERM, then SIGKILL) when the test ends.
func StartProcess(t testing.TB, name, bin string, env []string, readyURL string, args ...string) *Process {
	t.Helper()
	p := &Process{t: t, Name: name, bin: bin, args: args, env: env, ready: readyURL,
		log: filepath.Join(t.TempDir(), name+".log")}
	p.Start()
	t.Cleanup(func() {
		p.Stop()
		if t.Failed() || os.Getenv("TEST_LOG") != "" {
			b, _ := os.ReadFile(p.log)
			if len(b) > 8000 {
				b = b[len(b)-8000:]
			}
			t.Logf("--- %s log (tail) ---\n%s", name, b)
		}
	})
	return p
}

// Start (re)starts the process and waits for readiness.
func (p *Process) Start() {
	p.t.Helper()
	f, err := os.OpenFile(p.log, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		p.t.Fatal(err)
	}
	cmd := exec.Command(p.bin, p.args...)
	cmd.Env = append(os.Environ(), p.env...)
	cmd.Stdout, cmd.Stderr = f, f
	if err := cmd.Start(); err != nil {
		p.t.Fatalf("start %s: %v", p.Name, err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); _ = f.Close(); close(done) }()
	p.mu.Lock()
	p.cmd, p.done = cmd, done
	p.mu.Unlock()
	if p.ready != "" {
		p.WaitReady(60 * time.Second)
	}
}

// StartWaitingFor (re)starts the process and waits until url answers 200
// instead of the readiness URL: for a restart while a dependency is down,
// when the process is alive but cannot be ready.
func (p *Process) StartWaitingFor(url string) {
	p.t.Helper()
	ready := p.ready
	p.ready = url
	defer func() { p.ready = ready }()
	p.Start()
}

// WaitReady polls the readiness URL.
func (p *Process) WaitReady(timeout time.Duration) {
	p.t.Helper()
	deadline := time.Now().Add(timeout)
	c := &http.Client{Timeout: time.Second}
	for {
		resp, err := c.Get(p.ready)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return
			}
		}
		select {
		case <-p.done:
			b, _ := os.ReadFile(p.log)
			p.t.Fatalf("%s exited before it was ready:\n%s", p.Name, tail(b))
		default:
		}
		if time.Now().After(deadline) {
			b, _ := os.ReadFile(p.log)
			p.t.Fatalf("%s not ready at %s: %v\n%s", p.Name, p.ready, err, tail(b))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func tail(b []byte) []byte {
	if len(b) > 4000 {
		return b[len(b)-4000:]
	}
	return b
}

// Kill sends SIGKILL and waits for the process to go.
func (p *Process) Kill() { p.signal(syscall.SIGKILL, time.Second) }

// Stop sends SIGTERM, waits up to 20 s, then kills.
func (p *Process) Stop() { p.signal(syscall.SIGTERM, 20*time.Second) }

func (p *Process) signal(sig syscall.Signal, wait time.Duration) {
	p.mu.Lock()
	cmd, done := p.cmd, p.done
	p.cmd = nil
	p.mu.Unlock()
	if cmd == nil {
		return
	}
	_ = cmd.Process.Signal(sig)
	select {
	case <-done:
	case <-time.After(wait):
		_ = cmd.Process.Kill()
		<-done
	}
}

// Log returns what the process wrote so far.
func (p *Process) Log() []byte {
	b, _ := os.ReadFile(p.log)
	return b
}

// HTTP is a small JSON-over-HTTP client for end-to-end tests.
type HTTP struct {
	Client *http.Client
}

// Do sends a request and returns the response with its body read.
func (h HTTP) Do(ctx context.Context, method, url string, body []byte, header map[string]string) (*http.Response, []byte, error) {
	req, err := http.NewRequestWithContext(ctx, method, url, bytes.NewReader(body))
	if err != nil {
		return nil, nil, err
	}
	for k, v := range header {
		req.Header.Set(k, v)
	}
	c := h.Client
	if c == nil {
		c = &http.Client{Timeout: 30 * time.Second}
	}
	resp, err := c.Do(req)
	if err != nil {
		return nil, nil, fmt.Errorf("%s %s: %w", method, url, err)
	}
	defer resp.Body.Close()
	var buf bytes.Buffer
	_, err = buf.ReadFrom(resp.Body)
	return resp, buf.Bytes(), err
}

// RSS returns the process's resident set size and its peak (VmHWM) in bytes,
// from /proc.
func (p *Process) RSS() (rss, peak int64) {
	p.mu.Lock()
	cmd := p.cmd
	p.mu.Unlock()
	if cmd == nil || cmd.Process == nil {
		return 0, 0
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", cmd.Process.Pid))
	if err != nil {
		return 0, 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		var kb int64
		if _, err := fmt.Sscanf(line, "VmRSS: %d kB", &kb); err == nil {
			rss = kb << 10
		}
		if _, err := fmt.Sscanf(line, "VmHWM: %d kB", &kb); err == nil {
			peak = kb << 10
		}
	}
	return rss, peak
}
