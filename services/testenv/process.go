package testenv

import (
	"bytes"
	"context"
	"errors"
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
	port  int       // the port it listens on, when StartProcessOnPort picked it
	hold  *portHold // port held while it is stopped
	mu    sync.Mutex
	cmd   *exec.Cmd
	done  chan struct{}
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
	p := &Process{t: t, Name: name, bin: bin, args: args, env: env, ready: readyURL,
		log: filepath.Join(t.TempDir(), name+".log")}
	t.Cleanup(func() {
		p.signal(syscall.SIGTERM, 20*time.Second, false)
		p.hold.release()
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
	f, err := os.OpenFile(p.log, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		p.t.Fatal(err)
	}
	var from int64
	if st, err := f.Stat(); err == nil {
		from = st.Size()
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
	if p.ready == "" {
		return nil
	}
	err = p.waitReady(60*time.Second, from)
	if errors.Is(err, errPortTaken) {
		p.signal(syscall.SIGKILL, 5*time.Second, false)
	}
	return err
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
	if err := p.waitReady(timeout, 0); err != nil {
		p.t.Fatal(err)
	}
}

// waitReady polls the readiness URL; the log from offset from on tells
// whether the process could not bind its port.
func (p *Process) waitReady(timeout time.Duration, from int64) error {
	p.t.Helper()
	deadline := time.Now().Add(timeout)
	c := &http.Client{Timeout: time.Second}
	portTaken := func() bool {
		b, _ := os.ReadFile(p.log)
		return p.port != 0 && int64(len(b)) > from &&
			bytes.Contains(b[from:], []byte(fmt.Sprintf(":%d: bind: address already in use", p.port)))
	}
	for {
		resp, err := c.Get(p.ready)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return nil
			}
		}
		p.mu.Lock()
		done := p.done
		p.mu.Unlock()
		if portTaken() {
			return fmt.Errorf("%s could not bind port %d: %w", p.Name, p.port, errPortTaken)
		}
		select {
		case <-done:
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

// Kill sends SIGKILL and waits for the process to go; its port is held
// until Start.
func (p *Process) Kill() { p.signal(syscall.SIGKILL, time.Second, true) }

// Stop sends SIGTERM, waits up to 20 s, then kills; its port is held until
// Start.
func (p *Process) Stop() { p.StopWithin(20 * time.Second) }

// StopWithin sends SIGTERM, waits up to wait for the process to exit, then
// kills it; its port is held until Start.
func (p *Process) StopWithin(wait time.Duration) { p.signal(syscall.SIGTERM, wait, true) }

func (p *Process) signal(sig syscall.Signal, wait time.Duration, hold bool) {
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
	if hold && p.port != 0 {
		p.hold = holdPort(p.port)
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
