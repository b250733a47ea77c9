package testenv

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/mana/apigw/services/testenv/proc"
)

// Process is a binary under test, started with its own environment and
// run by package proc. Its output goes to a log file that is printed if the
// test fails.
type Process struct {
	t     testing.TB
	Name  string
	spec  proc.Spec
	ready string
	port  int       // the port it listens on, when StartProcessOnPort picked it
	hold  *portHold // port held while it is stopped
	mu    sync.Mutex
	run   *proc.Proc // the current run; nil while stopped
}

// errPortTaken is what start reports when the process could not bind its port.
var errPortTaken = errors.New("port taken")

// StartProcess starts bin with env (added to the current environment) and
// waits until readyURL answers 200 (skipped when empty). It is stopped
// (SIGTERM, then SIGKILL) when the test ends.
func StartProcess(t testing.TB, name, bin string, env []string, readyURL string, args ...string) *Process {
	t.Helper()
	p := newProcess(t, name, bin, env, readyURL, args)
	p.Start()
	return p
}

// StartProcessOnPort starts bin like StartProcess on a port it picks:
// env(port) is its environment and http://127.0.0.1:port+readyPath its
// readiness URL. When another server took the port first (the log says
// "address already in use"), it starts again on another one. It returns
// the process and its port; Stop and Kill hold the port until Start.
func StartProcessOnPort(t testing.TB, name, bin string, env func(port int) []string, readyPath string, args ...string) (*Process, int) {
	t.Helper()
	for attempt := 1; ; attempt++ {
		port := FreePort(t)
		p := newProcess(t, name, bin, env(port), fmt.Sprintf("http://127.0.0.1:%d%s", port, readyPath), args)
		p.port = port
		err := p.start()
		if err == nil {
			return p, port
		}
		if attempt == 10 {
			t.Fatalf("start %s: %v, %d times", name, err, attempt)
		}
		t.Logf("start %s on port %d: %v; trying another port", name, port, err)
	}
}

func newProcess(t testing.TB, name, bin string, env []string, readyURL string, args []string) *Process {
	p := &Process{t: t, Name: name, ready: readyURL,
		spec: proc.Spec{Name: name, Bin: bin, Args: args, Env: env, Log: filepath.Join(t.TempDir(), name+".log")}}
	t.Cleanup(func() {
		_ = p.signal(syscall.SIGTERM, 20*time.Second, false)
		p.hold.release()
		if t.Failed() || os.Getenv("TEST_LOG") != "" {
			t.Logf("--- %s log (tail) ---\n%s", name, p.Tail(8000))
		}
	})
	return p
}

// Start (re)starts the process and waits for readiness. On its own port
// (StartProcessOnPort) it retries for up to a minute while the port is taken.
func (p *Process) Start() {
	p.t.Helper()
	deadline := time.Now().Add(time.Minute)
	for {
		err := p.start()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			p.t.Fatalf("start %s: %v", p.Name, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// start runs the process once; it returns errPortTaken when the process
// could not bind its port, and fails the test on any other failure.
func (p *Process) start() error {
	p.t.Helper()
	p.hold.release()
	p.hold = nil
	run, err := proc.Start(p.spec)
	if err != nil {
		p.t.Fatal(err)
	}
	p.mu.Lock()
	p.run = run
	p.mu.Unlock()
	if p.ready == "" {
		return nil
	}
	err = p.waitReady(run, 60*time.Second)
	if errors.Is(err, errPortTaken) {
		_ = p.signal(syscall.SIGKILL, 5*time.Second, false)
		return err
	}
	if err != nil {
		p.t.Fatal(err)
	}
	return nil
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
	p.mu.Lock()
	run := p.run
	p.mu.Unlock()
	if run == nil {
		p.t.Fatalf("%s is not running", p.Name)
	}
	if err := p.waitReady(run, timeout); err != nil {
		p.t.Fatal(err)
	}
}

// waitReady polls the readiness URL of run; its log tells whether it could
// not bind its port.
func (p *Process) waitReady(run *proc.Proc, timeout time.Duration) error {
	taken := []byte(fmt.Sprintf(":%d: bind: address already in use", p.port))
	return run.WaitReady(p.t.Context(), p.ready, timeout, func() error {
		if p.port != 0 && bytes.Contains(run.Log(), taken) {
			return fmt.Errorf("could not bind port %d: %w", p.port, errPortTaken)
		}
		return nil
	})
}

// Kill sends SIGKILL and waits for the process to go; its port is held
// until Start.
func (p *Process) Kill() { _ = p.signal(syscall.SIGKILL, time.Second, true) }

// Stop sends SIGTERM, waits up to 20 s, then kills; its port is held until
// Start. It returns how the process ended (proc.ErrKilled when it was
// killed).
func (p *Process) Stop() error { return p.StopWithin(20 * time.Second) }

// StopWithin sends SIGTERM, waits up to wait for the process to exit, then
// kills it; its port is held until Start. It returns how the process ended.
func (p *Process) StopWithin(wait time.Duration) error {
	return p.signal(syscall.SIGTERM, wait, true)
}

// Exited reports whether the current run has ended, and how; a process
// stopped by Stop or Kill counts as ended.
func (p *Process) Exited() (bool, error) {
	p.mu.Lock()
	run := p.run
	p.mu.Unlock()
	if run == nil {
		return true, nil
	}
	return run.Exited()
}

func (p *Process) signal(sig syscall.Signal, wait time.Duration, hold bool) error {
	p.mu.Lock()
	run := p.run
	p.run = nil
	p.mu.Unlock()
	if run == nil {
		return nil
	}
	err := run.Signal(sig, wait)
	if hold && p.port != 0 {
		p.hold = holdPort(p.port)
	}
	return err
}

// Log returns what the process wrote so far, over all its runs.
func (p *Process) Log() []byte {
	b, _ := os.ReadFile(p.spec.Log)
	return b
}

// Tail returns the last n bytes of the log.
func (p *Process) Tail(n int) []byte {
	b := p.Log()
	return b[max(0, len(b)-n):]
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
	run := p.run
	p.mu.Unlock()
	if run == nil {
		return 0, 0
	}
	return proc.Status(run.Pid(), "VmRSS"), proc.Status(run.Pid(), "VmHWM")
}
