package main

import (
	"bufio"
	"context"
	"database/sql"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"time"
)

// machine is what the report says about where it ran.
type machine struct {
	cpus       int
	cpuModel   string
	memory     string
	kernel     string
	os         string
	goVersion  string
	versions   [][2]string // name, version
	gomaxprocs string
	gogc       string
}

func machineInfo(ctx context.Context, cfg config, dsn string) machine {
	m := machine{cpus: runtime.NumCPU(), goVersion: runtime.Version()}
	m.cpuModel = procField("/proc/cpuinfo", "model name")
	if kb, err := strconv.ParseFloat(strings.TrimSpace(strings.TrimSuffix(procField("/proc/meminfo", "MemTotal"), "kB")), 64); err == nil {
		m.memory = fmt.Sprintf("%.1f GiB", kb/(1<<20))
	}
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		m.kernel = strings.TrimSpace(string(b))
	}
	if v := procField("/etc/os-release", "PRETTY_NAME"); v != "" {
		m.os = strings.Trim(v, `"`)
	}
	m.gomaxprocs = envOr("GOMAXPROCS", "unset (Go's default: the number of CPUs)")
	m.gogc = envOr("GOGC", "unset (100)")
	ver := func(name string, args ...string) {
		cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		out, err := exec.CommandContext(cctx, args[0], args[1:]...).CombinedOutput()
		v := strings.TrimSpace(string(out))
		if err != nil || v == "" {
			v = "unknown"
		}
		m.versions = append(m.versions, [2]string{name, firstLine(v)})
	}
	ver("nginx", cfg.Nginx, "-v")
	ver("redis", "redis-server", "--version")
	ver("nats-server", cfg.NATSServer, "--version")
	pg := "unknown"
	if db, err := sql.Open("postgres", dsn); err == nil {
		cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		_ = db.QueryRowContext(cctx, "SELECT version()").Scan(&pg)
		cancel()
		_ = db.Close()
	}
	m.versions = append(m.versions, [2]string{"postgres", pg})
	return m
}

func envOr(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}

func firstLine(s string) string {
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		return s[:i]
	}
	return s
}

// procField reads "name: value" (or name=value) from a /proc-style file.
func procField(path, name string) string {
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		for _, sep := range []string{":", "="} {
			if k, v, ok := strings.Cut(line, sep); ok && strings.TrimSpace(k) == name {
				return strings.TrimSpace(v)
			}
		}
	}
	return ""
}

// fsyncLatency measures the disk's own fsync in dir: n writes of 512 bytes
// to one file, each followed by fsync, as a JetStream file store with
// sync_interval: always does per acknowledged write.
func fsyncLatency(dir string, n int) (latencies, error) {
	f, err := os.CreateTemp(dir, "fsync-probe-*")
	if err != nil {
		return latencies{}, fmt.Errorf("fsync probe: %w", err)
	}
	defer func() { _ = os.Remove(f.Name()) }()
	defer f.Close()
	buf := make([]byte, 512)
	ds := make([]time.Duration, 0, n)
	for range n {
		t0 := time.Now()
		if _, err := f.Write(buf); err != nil {
			return latencies{}, fmt.Errorf("fsync probe: %w", err)
		}
		if err := f.Sync(); err != nil {
			return latencies{}, fmt.Errorf("fsync probe: %w", err)
		}
		ds = append(ds, time.Since(t0))
	}
	return quantiles(ds), nil
}
