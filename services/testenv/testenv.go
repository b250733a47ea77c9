// Package testenv starts the real servers that integration tests talk to:
// a fresh Postgres database per test (in the cluster `make test` starts), a
// redis-server process per test, and an embedded nats-server with JetStream.
// A missing server fails the test; nothing here skips. It also runs the
// binaries under test (Process, on package proc, the one process runner the
// bench uses too) and builds them (BuildBinary). It is a module of its own,
// beside the stand-ins rather than inside their module, so that a module
// needs only the harness (and not the stand-ins) for its tests.
package testenv

import (
	"bytes"
	"context"
	"database/sql"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	_ "github.com/lib/pq" // Postgres driver
	"github.com/nats-io/nats-server/v2/server"
	"github.com/redis/go-redis/v9"

	"github.com/mana/apigw/migrations"
)

// Logger returns a logger that writes to the test log only when the test fails
// verbosely; it keeps test output readable.
func Logger(t testing.TB) *slog.Logger {
	if os.Getenv("TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

var dbCounter atomic.Int64

// PostgresURL creates an empty database with the api_gateway schema migrated
// and returns its URL. The database is dropped when the test ends.
// The cluster comes from TEST_DATABASE_URL, which `make test` sets.
func PostgresURL(t testing.TB) string {
	t.Helper()
	admin := os.Getenv("TEST_DATABASE_URL")
	if admin == "" {
		t.Fatal("TEST_DATABASE_URL is not set: run the tests with `make test`, which starts PostgreSQL")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	adb, err := sql.Open("postgres", admin)
	if err != nil {
		t.Fatalf("open admin db: %v", err)
	}
	defer adb.Close()
	name := fmt.Sprintf("t_%d_%d_%d", os.Getpid(), time.Now().UnixNano()%1e9, dbCounter.Add(1))
	if _, err := adb.ExecContext(ctx, "CREATE DATABASE "+name); err != nil {
		t.Fatalf("create database: %v", err)
	}
	u, err := url.Parse(admin)
	if err != nil {
		t.Fatalf("parse TEST_DATABASE_URL: %v", err)
	}
	u.Path = "/" + name
	dsn := u.String()
	db, err := sql.Open("postgres", dsn)
	if err != nil {
		t.Fatalf("open test db: %v", err)
	}
	defer db.Close()
	if err := migrations.Apply(ctx, db, Logger(t)); err != nil {
		t.Fatalf("migrate: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		adb, err := sql.Open("postgres", admin)
		if err != nil {
			return
		}
		defer adb.Close()
		_, _ = adb.ExecContext(ctx, "DROP DATABASE IF EXISTS "+name+" WITH (FORCE)")
	})
	return dsn
}

// FreePort returns a TCP port on 127.0.0.1 that was free a moment ago. It
// is drawn below the kernel's ephemeral range (32768+), so an outgoing
// connection cannot take it between this call and the server's bind; another
// test's server still can, so whoever binds it must retry on a bind failure
// (StartRedis and StartProcessOnPort do).
func FreePort(t testing.TB) int {
	t.Helper()
	for i := 0; i < 200; i++ {
		port := 15000 + rand.IntN(17000)
		l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", port))
		if err != nil {
			continue
		}
		_ = l.Close()
		// Also free on every interface (servers may bind ":port").
		if l2, err := net.Listen("tcp", fmt.Sprintf(":%d", port)); err == nil {
			_ = l2.Close()
			return port
		}
	}
	t.Fatal("no free port found")
	return 0
}

// portHold keeps the port of a stopped server bound until the server starts
// again, so that no other test's server takes it meanwhile. It closes every
// connection it accepts, so clients see the server down.
type portHold struct {
	l    net.Listener
	done chan struct{}
}

// holdPort binds 127.0.0.1:port, which also keeps ":port" from being bound.
// It returns nil when the port is already taken: the restart then retries.
func holdPort(port int) *portHold {
	l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", port))
	if err != nil {
		return nil
	}
	h := &portHold{l: l, done: make(chan struct{})}
	go func() {
		defer close(h.done)
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			_ = c.Close()
		}
	}()
	return h
}

// release frees the port; it is safe on a nil hold.
func (h *portHold) release() {
	if h == nil {
		return
	}
	_ = h.l.Close()
	<-h.done
}

// Redis is a redis-server process owned by one test.
type Redis struct {
	t    testing.TB
	Addr string
	// RunID is the run_id the current child reported in INFO server.
	RunID  string
	dir    string
	args   func() []string // more redis-server arguments for each start (a cluster node's)
	cmd    *exec.Cmd
	exited chan struct{}
	out    *bytes.Buffer // the child's log, read only after it exited
	hold   *portHold
}

// StartRedis starts redis-server on a free loopback port, without
// persistence, and checks that the server answering there is its own child
// (INFO server's process_id); when the port was taken meanwhile it starts
// again on another one. The test fails if the child died before the end.
func StartRedis(t testing.TB) *Redis {
	t.Helper()
	return startRedis(t, nil)
}

func startRedis(t testing.TB, args func() []string) *Redis {
	t.Helper()
	r := &Redis{t: t, dir: t.TempDir(), args: args}
	r.start(true)
	t.Cleanup(func() {
		r.stop(false)
		r.hold.release()
	})
	return r
}

// Start restarts the server on the same address after Stop, retrying while
// the port cannot be bound.
func (r *Redis) Start() {
	r.t.Helper()
	r.start(false)
}

func (r *Redis) start(fresh bool) {
	r.t.Helper()
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		r.t.Fatal("redis-server not found: run the tests with `make test`, which installs it")
	}
	deadline := time.Now().Add(60 * time.Second)
	for attempt := 1; ; attempt++ {
		if fresh {
			r.Addr = fmt.Sprintf("127.0.0.1:%d", FreePort(r.t))
		}
		r.hold.release()
		r.hold = nil
		err := r.try(bin)
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			r.t.Fatalf("redis-server on %s, attempt %d: %v", r.Addr, attempt, err)
		}
		r.t.Logf("redis-server on %s, attempt %d: %v; trying again", r.Addr, attempt, err)
		time.Sleep(50 * time.Millisecond)
	}
}

// try starts one child on r.Addr and waits until it answers as itself.
func (r *Redis) try(bin string) error {
	_, port, _ := net.SplitHostPort(r.Addr)
	cmd := exec.Command(bin, "--port", port, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
		"--dir", r.dir, "--daemonize", "no", "--logfile", "")
	if r.args != nil {
		cmd.Args = append(cmd.Args, r.args()...)
	}
	out := &bytes.Buffer{}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start redis-server: %w", err)
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	kill := func() { _ = cmd.Process.Kill(); <-exited }
	c := redis.NewClient(&redis.Options{Addr: r.Addr, MaxRetries: -1, DialTimeout: time.Second})
	defer c.Close()
	deadline := time.Now().Add(20 * time.Second)
	for {
		select {
		case <-exited:
			return fmt.Errorf("redis-server exited at start: %s", lastLines(out.String(), 3))
		default:
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		info, err := c.Info(ctx, "server").Result()
		cancel()
		if err == nil {
			pid, runID := infoField(info, "process_id"), infoField(info, "run_id")
			if pid != strconv.Itoa(cmd.Process.Pid) {
				kill()
				return fmt.Errorf("the port is answered by another redis-server (process_id %q, run_id %q), not by pid %d", pid, runID, cmd.Process.Pid)
			}
			r.cmd, r.exited, r.out, r.RunID = cmd, exited, out, runID
			return nil
		}
		if time.Now().After(deadline) {
			kill()
			return fmt.Errorf("redis-server did not answer: %w", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// infoField returns the value of name in an INFO answer ("name:value" lines).
func infoField(info, name string) string {
	for _, line := range strings.Split(info, "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), name+":"); ok {
			return v
		}
	}
	return ""
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], " | ")
}

// Stop kills the server (data is lost: it runs without persistence) and
// holds its port until Start. It fails the test if the child had died on
// its own: the test then talked to nothing, or to someone else's server.
func (r *Redis) Stop() { r.stop(true) }

func (r *Redis) stop(hold bool) {
	if r.cmd == nil {
		return
	}
	select {
	case <-r.exited:
		r.t.Errorf("redis-server %s (pid %d) exited during the test: %s", r.Addr, r.cmd.Process.Pid, lastLines(r.out.String(), 3))
	default:
		_ = r.cmd.Process.Kill()
		<-r.exited
	}
	r.cmd = nil
	if hold {
		_, port, _ := net.SplitHostPort(r.Addr)
		p, _ := strconv.Atoi(port)
		r.hold = holdPort(p)
	}
}

// Client returns a client for the server, closed when the test ends.
func (r *Redis) Client() *redis.Client {
	c := redis.NewClient(&redis.Options{Addr: r.Addr})
	r.t.Cleanup(func() { _ = c.Close() })
	return c
}

// NATS is an embedded nats-server with JetStream, owned by one test.
type NATS struct {
	t    testing.TB
	opts server.Options
	srv  *server.Server
	hold *portHold
	URL  string
}

// StartNATS starts nats-server (the Go module) with JetStream on a port it
// binds itself, storing in a temporary folder. SyncAlways makes acknowledged
// writes durable.
func StartNATS(t testing.TB) *NATS {
	t.Helper()
	n := &NATS{t: t}
	n.opts = server.Options{
		Host:       "127.0.0.1",
		Port:       server.RANDOM_PORT,
		JetStream:  true,
		StoreDir:   filepath.Join(t.TempDir(), "js"),
		NoLog:      true,
		NoSigs:     true,
		SyncAlways: true,
		MaxPayload: 1 << 20,
	}
	n.Start()
	t.Cleanup(func() {
		n.stop(false)
		n.hold.release()
	})
	return n
}

// Start (re)starts the server on the same port and store; after Stop it
// retries while the port cannot be bound.
func (n *NATS) Start() {
	n.t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for attempt := 1; ; attempt++ {
		n.hold.release()
		n.hold = nil
		opts := n.opts
		srv, err := server.NewServer(&opts)
		if err != nil {
			n.t.Fatalf("nats-server: %v", err)
		}
		// Start returns once the client listener is bound or has failed.
		srv.Start()
		if addr, ok := srv.Addr().(*net.TCPAddr); ok && srv.ReadyForConnections(20*time.Second) {
			n.srv = srv
			if n.opts.Port == server.RANDOM_PORT {
				n.opts.Port = addr.Port
				n.URL = fmt.Sprintf("nats://127.0.0.1:%d", addr.Port)
			}
			return
		}
		srv.Shutdown()
		srv.WaitForShutdown()
		if time.Now().After(deadline) {
			n.t.Fatalf("nats-server could not listen on port %d (attempt %d)", n.opts.Port, attempt)
		}
		n.t.Logf("nats-server could not listen on port %d (attempt %d); trying again", n.opts.Port, attempt)
		time.Sleep(100 * time.Millisecond)
	}
}

// Stop shuts the server down and holds its port; Start brings it back with
// its stored streams.
func (n *NATS) Stop() { n.stop(true) }

func (n *NATS) stop(hold bool) {
	if n.srv == nil {
		return
	}
	n.srv.Shutdown()
	n.srv.WaitForShutdown()
	n.srv = nil
	if hold {
		n.hold = holdPort(n.opts.Port)
	}
}

// Env builds an environment for a child process: the current one plus kv.
func Env(kv ...string) []string {
	env := os.Environ()
	for i := 0; i+1 < len(kv); i += 2 {
		env = append(env, kv[i]+"="+kv[i+1])
	}
	return env
}

// RepoRoot returns the repository root (the folder holding go.work).
func RepoRoot(t testing.TB) string {
	t.Helper()
	dir, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.work")); err == nil {
			return dir
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			t.Fatal("go.work not found above " + dir)
		}
		dir = parent
	}
}

// BuildBinary builds a main package of the workspace (e.g. "./gateway/cmd/gateway")
// into a temporary folder and returns the binary's path. TEST_BUILD_RACE=1
// builds it with the race detector.
func BuildBinary(t testing.TB, pkg string) string {
	t.Helper()
	root := RepoRoot(t)
	out := filepath.Join(t.TempDir(), filepath.Base(strings.TrimSuffix(pkg, "/")))
	args := []string{"build", "-o", out}
	if os.Getenv("TEST_BUILD_RACE") != "" {
		args = append(args, "-race")
	}
	cmd := exec.Command("go", append(args, pkg)...)
	cmd.Dir = root
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build %s: %v\n%s", pkg, err, b)
	}
	return out
}
