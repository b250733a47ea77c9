// Package proc runs the child processes of the tests and of the bench: a
// binary with its own environment, its output appended to a log file,
// polled until it answers its readiness URL, stopped with SIGTERM and then
// SIGKILL. It reports errors instead of failing a test, so that the bench
// (a program) and testenv.Process (a test's helper) share it.
package proc

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Spec is what a process is started with; Start can run it again.
type Spec struct {
	Name string   // for messages
	Bin  string   // the executable
	Args []string // its arguments
	Env  []string // KEY=value pairs added to the current environment
	Log  string   // the file its stdout and stderr are appended to
	// OwnGroup starts it in a process group of its own: a Ctrl-C in the
	// terminal then reaches only the parent, which stops it in order.
	OwnGroup bool
}

// Proc is one run of a Spec. Its methods are safe for concurrent use.
type Proc struct {
	Spec
	cmd  *exec.Cmd
	done chan struct{}
	mu   sync.Mutex
	err  error // the exit error, once done is closed
	from int64 // the log's size when this run started
}

// Start starts the process. It does not wait for anything.
func Start(s Spec) (*Proc, error) {
	f, err := os.OpenFile(s.Log, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, fmt.Errorf("start %s: %w", s.Name, err)
	}
	var from int64
	if st, err := f.Stat(); err == nil {
		from = st.Size()
	}
	cmd := exec.Command(s.Bin, s.Args...)
	cmd.Env = append(os.Environ(), s.Env...)
	cmd.Stdout, cmd.Stderr = f, f
	if s.OwnGroup {
		cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	}
	if err := cmd.Start(); err != nil {
		_ = f.Close()
		return nil, fmt.Errorf("start %s: %w", s.Name, err)
	}
	p := &Proc{Spec: s, cmd: cmd, done: make(chan struct{}), from: from}
	go func() {
		err := cmd.Wait()
		_ = f.Close()
		p.mu.Lock()
		p.err = err
		p.mu.Unlock()
		close(p.done)
	}()
	return p, nil
}

// Pid is the process's id.
func (p *Proc) Pid() int { return p.cmd.Process.Pid }

// Done is closed when the process has exited.
func (p *Proc) Done() <-chan struct{} { return p.done }

// Exited reports whether the process has ended, and how (nil for exit
// status 0).
func (p *Proc) Exited() (bool, error) {
	select {
	case <-p.done:
		p.mu.Lock()
		defer p.mu.Unlock()
		return true, p.err
	default:
		return false, nil
	}
}

// ErrKilled is what Stop returns when the process outlived its wait after
// SIGTERM and was killed.
var ErrKilled = errors.New("killed: still running after SIGTERM")

// Stop sends SIGTERM and waits up to wait for the process to exit; then it
// kills it. It returns the exit error, or ErrKilled. A process already gone
// returns how it ended.
func (p *Proc) Stop(wait time.Duration) error { return p.Signal(syscall.SIGTERM, wait) }

// Kill sends SIGKILL and waits for the process to go.
func (p *Proc) Kill() { _ = p.Signal(syscall.SIGKILL, time.Minute) }

// Signal sends sig and waits up to wait for the process to exit; then it
// kills it and returns ErrKilled.
func (p *Proc) Signal(sig syscall.Signal, wait time.Duration) error {
	if ended, err := p.Exited(); ended {
		return err
	}
	_ = p.cmd.Process.Signal(sig)
	t := time.NewTimer(wait)
	defer t.Stop()
	select {
	case <-p.done:
		_, err := p.Exited()
		return err
	case <-t.C:
		_ = p.cmd.Process.Kill()
		<-p.done
		return fmt.Errorf("%s: %w within %s", p.Name, ErrKilled, wait)
	}
}

// Log is what this run wrote to the log so far (not the runs before it).
func (p *Proc) Log() []byte {
	b, _ := os.ReadFile(p.Spec.Log)
	if int64(len(b)) < p.from {
		return nil
	}
	return b[p.from:]
}

// Tail is the last n bytes of the log file, for error messages.
func (p *Proc) Tail(n int) []byte {
	b, _ := os.ReadFile(p.Spec.Log)
	return b[max(0, len(b)-n):]
}

// TailSize is how much of the log an error message of this package quotes.
const TailSize = 4000

// WaitReady polls url until it answers 200. It gives up when the process
// exits, when the timeout passes, when ctx ends, or when check (if not nil)
// returns an error, which it returns wrapped: the caller's way to notice
// early, in the log, what will never become ready.
func (p *Proc) WaitReady(ctx context.Context, url string, timeout time.Duration, check func() error) error {
	c := &http.Client{Timeout: time.Second}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	for {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if err != nil {
			return fmt.Errorf("%s: %w", p.Name, err)
		}
		resp, err := c.Do(req)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
			err = fmt.Errorf("status %d", resp.StatusCode)
		}
		if check != nil {
			if err := check(); err != nil {
				return fmt.Errorf("%s: %w", p.Name, err)
			}
		}
		if ended, how := p.Exited(); ended {
			return fmt.Errorf("%s exited (%v) before it was ready:\n%s", p.Name, how, p.Tail(TailSize))
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s not ready at %s within %s: %v (%w)\n%s", p.Name, url, timeout, err, ctx.Err(), p.Tail(TailSize))
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// Status reads a field of /proc/<pid>/status given in kB, such as VmRSS or
// VmHWM, in bytes; 0 when the process or the field is gone.
func Status(pid int, field string) int64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, field+":"); ok {
			n, _ := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(rest), "kB")), 10, 64)
			return n << 10
		}
	}
	return 0
}

// FreePort returns a loopback TCP port that was free a moment ago.
func FreePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("free port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}
