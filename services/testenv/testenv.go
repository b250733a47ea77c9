// Package testenv starts the real servers that integration tests talk to:
// a fresh Postgres database per test (in the cluster `make test` starts), a
// redis-server process per test, and an embedded nats-server with JetStream.
// A missing server fails the test; nothing here skips.
package testenv

import (
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
// connection cannot take it between this call and the server's bind.
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

// Redis is a redis-server process owned by one test.
type Redis struct {
	t    testing.TB
	Addr string
	dir  string
	cmd  *exec.Cmd
}

// StartRedis starts redis-server on a free loopback port, without persistence.
func StartRedis(t testing.TB) *Redis {
	t.Helper()
	r := &Redis{t: t, dir: t.TempDir()}
	r.Addr = fmt.Sprintf("127.0.0.1:%d", FreePort(t))
	r.Start()
	t.Cleanup(r.Stop)
	return r
}

// Start (re)starts the server on the same address.
func (r *Redis) Start() {
	r.t.Helper()
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		r.t.Fatal("redis-server not found: run the tests with `make test`, which installs it")
	}
	_, port, _ := net.SplitHostPort(r.Addr)
	r.cmd = exec.Command(bin, "--port", port, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
		"--dir", r.dir, "--daemonize", "no", "--logfile", "")
	r.cmd.Stdout, r.cmd.Stderr = io.Discard, io.Discard
	if err := r.cmd.Start(); err != nil {
		r.t.Fatalf("start redis-server: %v", err)
	}
	c := redis.NewClient(&redis.Options{Addr: r.Addr})
	defer c.Close()
	deadline := time.Now().Add(10 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
		err := c.Ping(ctx).Err()
		cancel()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			r.t.Fatalf("redis-server did not answer: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Stop kills the server (data is lost: it runs without persistence).
func (r *Redis) Stop() {
	if r.cmd != nil && r.cmd.Process != nil {
		_ = r.cmd.Process.Kill()
		_ = r.cmd.Wait()
		r.cmd = nil
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
	URL  string
}

// StartNATS starts nats-server (the Go module) with JetStream on a free port,
// storing in a temporary folder. SyncAlways makes acknowledged writes durable.
func StartNATS(t testing.TB) *NATS {
	t.Helper()
	n := &NATS{t: t}
	n.opts = server.Options{
		Host:       "127.0.0.1",
		Port:       FreePort(t),
		JetStream:  true,
		StoreDir:   filepath.Join(t.TempDir(), "js"),
		NoLog:      true,
		NoSigs:     true,
		SyncAlways: true,
		MaxPayload: 1 << 20,
	}
	n.URL = fmt.Sprintf("nats://127.0.0.1:%d", n.opts.Port)
	n.Start()
	t.Cleanup(n.Stop)
	return n
}

// Start (re)starts the server on the same port and store.
func (n *NATS) Start() {
	n.t.Helper()
	opts := n.opts
	srv, err := server.NewServer(&opts)
	if err != nil {
		n.t.Fatalf("nats-server: %v", err)
	}
	go srv.Start()
	if !srv.ReadyForConnections(10 * time.Second) {
		n.t.Fatal("nats-server not ready")
	}
	n.srv = srv
}

// Stop shuts the server down; Start brings it back with its stored streams.
func (n *NATS) Stop() {
	if n.srv != nil {
		n.srv.Shutdown()
		n.srv.WaitForShutdown()
		n.srv = nil
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
