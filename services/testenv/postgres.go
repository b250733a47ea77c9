package testenv

import (
	"context"
	"database/sql"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/mana/apigw/migrations"
)

// Postgres is a PostgreSQL server owned by one test, for tests that stop
// and start the database (the shared cluster of PostgresURL must stay up
// for every other test). It runs with fsync off from a temporary folder; as
// root it runs as the postgres user, since PostgreSQL refuses root.
type Postgres struct {
	t    testing.TB
	bin  string
	root string
	port int
}

// StartPostgres creates a cluster (initdb), starts it on a free port and
// applies the migrations to its postgres database. The server is stopped and
// its folder removed when the test ends.
func StartPostgres(t testing.TB) *Postgres {
	t.Helper()
	bin := pgBinDir(t)
	root, err := os.MkdirTemp("", "mana-pg-")
	if err != nil {
		t.Fatalf("postgres: %v", err)
	}
	p := &Postgres{t: t, bin: bin, root: root}
	t.Cleanup(func() {
		p.Stop()
		_ = os.RemoveAll(root)
	})
	if os.Geteuid() == 0 {
		u, err := user.Lookup("postgres")
		if err != nil {
			t.Fatalf("postgres: running as root needs the postgres user (the postgresql package creates it): %v", err)
		}
		uid, _ := strconv.Atoi(u.Uid)
		gid, _ := strconv.Atoi(u.Gid)
		if err := os.Chown(root, uid, gid); err != nil {
			t.Fatalf("postgres: %v", err)
		}
	}
	if out, err := p.cmd("initdb", "-D", p.data(), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--locale=C", "-N").CombinedOutput(); err != nil {
		t.Fatalf("postgres: initdb: %v\n%s", err, out)
	}
	// The port was free a moment ago; another test's server may take it
	// first, and then the cluster starts on another one.
	for attempt := 1; ; attempt++ {
		p.port = FreePort(t)
		err := p.start()
		if err == nil {
			break
		}
		if attempt == 10 || !strings.Contains(err.Error(), "Address already in use") {
			t.Fatalf("postgres: %v", err)
		}
		t.Logf("postgres: port %d taken; trying another", p.port)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	db, err := sql.Open("postgres", p.URL())
	if err != nil {
		t.Fatalf("postgres: %v", err)
	}
	defer db.Close()
	if err := migrations.Apply(ctx, db, Logger(t)); err != nil {
		t.Fatalf("postgres: migrate: %v", err)
	}
	return p
}

// URL is the migrated database's URL; it stays the same across Stop and Start.
func (p *Postgres) URL() string {
	return fmt.Sprintf("postgres://postgres@127.0.0.1:%d/postgres?sslmode=disable", p.port)
}

// Start (re)starts the server on its port and waits until it accepts
// connections (pg_ctl -w).
func (p *Postgres) Start() {
	p.t.Helper()
	if err := p.start(); err != nil {
		p.t.Fatalf("postgres: %v", err)
	}
}

// start runs pg_ctl start once; its error carries the server log's tail,
// which tells a port taken ("Address already in use").
func (p *Postgres) start() error {
	opts := fmt.Sprintf("-p %d -k %s -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off", p.port, p.root)
	logFile := filepath.Join(p.root, "postgres.log")
	var from int
	if b, err := os.ReadFile(logFile); err == nil {
		from = len(b)
	}
	out, err := p.cmd("pg_ctl", "-D", p.data(), "-l", logFile, "-w", "-t", "60", "-o", opts, "start").CombinedOutput()
	if err != nil {
		log, _ := os.ReadFile(logFile)
		return fmt.Errorf("start on port %d: %w\n%s\n%s", p.port, err, out, lastLines(string(log[min(from, len(log)):]), 20))
	}
	return nil
}

// Stop shuts the server down (fast mode: sessions are disconnected) and
// waits until it is gone; the data stays for Start.
func (p *Postgres) Stop() {
	p.t.Helper()
	if _, err := os.Stat(filepath.Join(p.data(), "postmaster.pid")); err != nil {
		return
	}
	if out, err := p.cmd("pg_ctl", "-D", p.data(), "-m", "fast", "-w", "-t", "60", "stop").CombinedOutput(); err != nil {
		p.t.Errorf("postgres: stop: %v\n%s", err, out)
	}
}

func (p *Postgres) data() string { return filepath.Join(p.root, "data") }

func (p *Postgres) cmd(name string, args ...string) *exec.Cmd {
	path := filepath.Join(p.bin, name)
	if os.Geteuid() == 0 {
		c := exec.Command("runuser", append([]string{"-u", "postgres", "--", path}, args...)...)
		c.Dir = "/"
		return c
	}
	return exec.Command(path, args...)
}

// pgBinDir finds initdb and pg_ctl: on PATH, else the newest
// /usr/lib/postgresql/*/bin (Debian keeps them off PATH).
func pgBinDir(t testing.TB) string {
	if p, err := exec.LookPath("pg_ctl"); err == nil {
		return filepath.Dir(p)
	}
	dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	sort.Slice(dirs, func(i, j int) bool {
		vi, _ := strconv.Atoi(strings.Split(dirs[i], "/")[4])
		vj, _ := strconv.Atoi(strings.Split(dirs[j], "/")[4])
		return vi < vj
	})
	for i := len(dirs) - 1; i >= 0; i-- {
		if _, err := os.Stat(filepath.Join(dirs[i], "initdb")); err == nil {
			return dirs[i]
		}
	}
	t.Fatal("postgres: initdb and pg_ctl not found (apt-get install postgresql; make test installs it)")
	return ""
}
