package testenv

import (
	"context"
	"fmt"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
)

// TestRedisRefusesAForeignServer starts a second child on the address of a
// running redis-server: the answer there comes from the first server, and
// try must see it is not its own child rather than hand the test a server
// another test owns.
func TestRedisRefusesAForeignServer(t *testing.T) {
	first := StartRedis(t)
	if first.RunID == "" {
		t.Fatal("no run_id recorded")
	}
	second := &Redis{t: t, dir: t.TempDir(), Addr: first.Addr}
	err := second.try("redis-server")
	if err == nil {
		second.stop(false)
		t.Fatal("a second child on a taken port was accepted")
	}
	t.Logf("refused: %v", err)
	// The first one still answers as itself.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	info, err := first.Client().Info(ctx, "server").Result()
	if err != nil {
		t.Fatal(err)
	}
	if got := infoField(info, "run_id"); got != first.RunID {
		t.Fatalf("run_id %q, want %q", got, first.RunID)
	}
}

// TestRedisRestartHoldsThePort stops a server: its port stays bound (no
// other test's server takes it) and answers nothing, and Start brings a new
// child back on the same address.
func TestRedisRestartHoldsThePort(t *testing.T) {
	r := StartRedis(t)
	before := r.RunID
	r.Stop()
	if l, err := net.Listen("tcp", r.Addr); err == nil {
		_ = l.Close()
		t.Fatal("the port of the stopped server is free for anyone")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := r.Client().Ping(ctx).Err(); err == nil {
		t.Fatal("the stopped server answered PING")
	}
	r.Start()
	if r.RunID == "" || r.RunID == before {
		t.Fatalf("run_id %q after the restart, %q before", r.RunID, before)
	}
	if err := r.Client().Ping(ctx).Err(); err != nil {
		t.Fatalf("PING after the restart: %v", err)
	}
}

// TestNATSRestartRetriesThePort restarts the embedded server on its port
// while another listener still has it: Start keeps trying until the port is
// free, instead of failing or binding elsewhere.
func TestNATSRestartRetriesThePort(t *testing.T) {
	n := StartNATS(t)
	if !strings.HasSuffix(n.URL, ":"+strconv.Itoa(n.opts.Port)) || n.opts.Port <= 0 {
		t.Fatalf("URL %s, port %d", n.URL, n.opts.Port)
	}
	n.Stop()
	n.hold.release()
	n.hold = nil
	foreign, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", n.opts.Port))
	if err != nil {
		t.Fatal(err)
	}
	freed := make(chan time.Time, 1)
	go func() {
		time.Sleep(time.Second)
		freed <- time.Now()
		_ = foreign.Close()
	}()
	n.Start()
	returned := time.Now()
	if at := <-freed; returned.Before(at) {
		t.Fatal("Start returned before the port was free")
	}
	nc, err := nats.Connect(n.URL, nats.Timeout(5*time.Second))
	if err != nil {
		t.Fatalf("connect after the restart: %v", err)
	}
	nc.Close()
}

// TestPostgresTellsATakenPort: a cluster started on a port another listener
// holds fails with the error StartPostgres retries on another port for.
func TestPostgresTellsATakenPort(t *testing.T) {
	p := StartPostgres(t)
	p.Stop()
	l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", p.port))
	if err != nil {
		t.Fatal(err)
	}
	err = p.start()
	_ = l.Close()
	if err == nil || !strings.Contains(err.Error(), "Address already in use") {
		t.Fatalf("start on a taken port: %v", err)
	}
	p.Start()
}
