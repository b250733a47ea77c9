package main

import (
	"context"
	"math"
	"os"
	"strings"
	"testing"
	"time"

	usagev1 "github.com/mana/apigw/proto/usage/v1"
	"github.com/mana/apigw/services/testenv"
)

func TestMedian(t *testing.T) {
	for _, tc := range []struct {
		name string
		in   []float64
		want float64
	}{
		{"one", []float64{3}, 3},
		{"odd", []float64{5, 1, 3}, 3},
		{"even", []float64{4, 1, 3, 2}, 2.5},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := median(tc.in); got != tc.want {
				t.Fatalf("median(%v) = %v, want %v", tc.in, got, tc.want)
			}
		})
	}
	if !math.IsNaN(median(nil)) {
		t.Fatal("median of nothing is not NaN")
	}
}

func TestQuantiles(t *testing.T) {
	d := make([]time.Duration, 1000)
	for i := range d {
		d[len(d)-1-i] = time.Duration(i+1) * time.Microsecond // 1..1000 µs, reversed
	}
	got := quantiles(d)
	want := latencies{p50: 500 * time.Microsecond, p90: 900 * time.Microsecond, p99: 990 * time.Microsecond,
		p999: 999 * time.Microsecond, max: 1000 * time.Microsecond}
	if got != want {
		t.Fatalf("quantiles = %+v, want %+v", got, want)
	}
	if (quantiles(nil) != latencies{}) {
		t.Fatal("quantiles of nothing")
	}
}

func TestStatFields(t *testing.T) {
	for _, tc := range []struct {
		name, line   string
		ppid, ut, st string
		wantErr      bool
	}{
		{name: "plain", line: "42 (nginx) S 7 42 42 0 -1 4194560 100 0 0 0 25 13 0 0 20 0 1 0", ppid: "7", ut: "25", st: "13"},
		{name: "spaces and parens in the name", line: "42 (a (b) c) R 1 42 42 0 -1 0 0 0 0 0 3 4 0", ppid: "1", ut: "3", st: "4"},
		{name: "no name", line: "42 S 1", wantErr: true},
		{name: "short", line: "42 (x) S 1 2 3", wantErr: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f, err := statFields([]byte(tc.line))
			if tc.wantErr {
				if err == nil {
					t.Fatalf("no error for %q", tc.line)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if f[1] != tc.ppid || f[11] != tc.ut || f[12] != tc.st {
				t.Fatalf("ppid %s utime %s stime %s", f[1], f[11], f[12])
			}
		})
	}
}

func TestOwnProcess(t *testing.T) {
	if _, err := cpuSeconds(os.Getpid()); err != nil {
		t.Fatal(err)
	}
	if memKB(os.Getpid(), "VmHWM") <= 0 || memKB(os.Getpid(), "VmRSS") <= 0 {
		t.Fatal("no VmHWM or VmRSS for this process")
	}
}

func TestRotate(t *testing.T) {
	in := []string{"a", "b", "c"}
	for r, want := range []string{"abc", "bca", "cab", "abc"} {
		if got := strings.Join(rotate(in, r), ""); got != want {
			t.Errorf("rotate(%d) = %s, want %s", r, got, want)
		}
	}
}

func TestParseGoBench(t *testing.T) {
	out := `goos: linux
BenchmarkEdgeFullPath/serial-2         	    2581	    824242 ns/op	         0 pg-stmts/op	         1.000 redis-cmds/op	   23522 B/op	     260 allocs/op
BenchmarkBareProxy/parallel-2          	   38108	     62824 ns/op	   44195 B/op	      83 allocs/op
PASS
`
	lines := parseGoBench(out)
	if len(lines) != 2 {
		t.Fatalf("%d lines", len(lines))
	}
	fp, ok := fullPathBench(lines)
	if !ok || fp.n != 2581 || fp.metrics["redis-cmds/op"] != 1 || fp.metrics["pg-stmts/op"] != 0 || fp.metrics["allocs/op"] != 260 {
		t.Fatalf("full path line %+v", fp)
	}
	if lines[1].metrics["B/op"] != 44195 {
		t.Fatalf("bare line %+v", lines[1])
	}
}

func TestConfig(t *testing.T) {
	dir := t.TempDir()
	base := map[string]string{"BENCH_DATABASE_URL": "postgres://x@127.0.0.1:1/postgres", "BENCH_REDIS_ADDR": "127.0.0.1:2",
		"BENCH_NATS_URL": "nats://127.0.0.1:3", "BENCH_BIN_DIR": dir, "BENCH_WORK_DIR": dir, "BENCH_OUT": dir + "/r.md"}
	for _, tc := range []struct {
		name    string
		env     map[string]string
		wantErr []string
		check   func(t *testing.T, c config)
	}{
		{name: "full defaults", check: func(t *testing.T, c config) {
			if c.Rounds != 3 || c.FixedRate != 2000 || c.ReplayEvents != 1_000_000 || c.MaxDuration != 3*time.Second {
				t.Fatalf("%+v", c)
			}
		}},
		{name: "smoke with an override", env: map[string]string{"BENCH_PROFILE": "smoke", "BENCH_ROUNDS": "2"}, check: func(t *testing.T, c config) {
			if c.Rounds != 2 || c.MaxDuration != 300*time.Millisecond {
				t.Fatalf("%+v", c)
			}
		}},
		{name: "every problem at once", env: map[string]string{"BENCH_PROFILE": "huge", "BENCH_ROUNDS": "x", "BENCH_MAX_DURATION": "-1s", "BENCH_NATS_URL": ""},
			wantErr: []string{"BENCH_PROFILE", "BENCH_ROUNDS", "BENCH_MAX_DURATION", "BENCH_NATS_URL is required"}},
		{name: "replay smaller than the pipeline", env: map[string]string{"BENCH_PIPELINE_EVENTS": "10", "BENCH_REPLAY_EVENTS": "5"},
			wantErr: []string{"BENCH_REPLAY_EVENTS"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			env := map[string]string{}
			for k, v := range base {
				env[k] = v
			}
			for k, v := range tc.env {
				env[k] = v
			}
			c, err := configFromEnv(func(k string) string { return env[k] })
			if len(tc.wantErr) > 0 {
				if err == nil {
					t.Fatal("no error")
				}
				for _, w := range tc.wantErr {
					if !strings.Contains(err.Error(), w) {
						t.Errorf("error %q lacks %q", err, w)
					}
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			tc.check(t, c)
		})
	}
}

func TestChecksVerdicts(t *testing.T) {
	s := func(rate float64, p50, p99 time.Duration) []sample {
		return []sample{{rate: rate, requests: 100, lat: latencies{p50: p50, p99: p99}}}
	}
	gw := s(1800, 0, 0)
	gw[0].jsMsgs, gw[0].cpu, gw[0].extraCPU = 5, 100*30e-6, map[string]float64{"nats": 100 * 20e-6} // 0.05 msgs, 30 µs, NATS 20 µs per call
	bare := s(2000, 0, 0)
	bare[0].cpu = 100 * 25e-6 // 25 µs per call: gateway ÷ bare = 1.2
	r := &results{
		max: map[string][]sample{"direct": s(10000, 0, 0), "nginx": s(5000, 0, 0), "bare-go": bare, "gateway": gw},
		rates: []rateRun{{rate: 2000, fixed: true, samples: map[string][]sample{
			"direct":  s(2000, 100*time.Microsecond, time.Millisecond),
			"nginx":   s(2000, 150*time.Microsecond, 1500*time.Microsecond),
			"gateway": s(2000, 2*time.Millisecond, 7*time.Millisecond),
		}}},
		keys:      map[string][]sample{"keys-few": s(1000, 0, 0), "keys-many": s(850, 0, 0)},
		fsync:     latencies{p50: 1500 * time.Microsecond, p99: 2 * time.Millisecond},
		cfg:       config{Connections: 64, FewKeys: 100, ManyKeys: 10000},
		peakFixed: map[string]int64{"gateway": 50 * 1024},
		goBench:   "BenchmarkEdgeFullPath/serial-2 10 100 ns/op 0 pg-stmts/op 1.000 redis-cmds/op\n",
		pipeline: pipelineResult{billing: drainResult{name: "billing-worker", events: 60000, seconds: 10},
			aggregator: drainResult{name: "aggregator", events: 50000, seconds: 10}, replayEvents: 100_000, replaySeconds: 5},
	}
	got := map[string]string{}
	for _, c := range r.checks() {
		got[c.what] = c.verdict()
	}
	want := map[string]string{
		"full path ÷ nginx, max throughput":                                 "MISS", // 0.36
		"full path ÷ features off (bare Go proxy), max throughput":          "PASS", // 0.9
		"JetStream messages per served call at saturation (64 connections)": "PASS", // 0.05
		"NATS CPU per served call at saturation":                            "MISS", // 20 µs > 15
		"added p50 over direct at 2000 req/s":                               "PASS", // 1.9 ms ≤ 1.5 + 0.5
		"added p99 over direct at 2000 req/s":                               "MISS", // 6 ms > 3 + 2
		"throughput with 10000 keys ÷ with 100 keys":                        "MISS", // 0.85
		"gateway CPU per request ÷ bare Go proxy's (max throughput)":        "PASS", // 1.2
		"Redis commands per hot request":                                    "PASS",
		"Postgres statements per hot request":                               "PASS",
		"billing-worker events/s ÷ full-path max req/s":                     "PASS", // 6000/1800
		"aggregator events/s ÷ full-path max req/s":                         "MISS", // 5000/1800 < 3
		"replay of 1 M events":                                              "PASS", // 50 s
		"gateway peak RSS at 2000 req/s":                                    "PASS",
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s: %s, want %s", k, got[k], v)
		}
	}
	if len(got) != len(want) {
		t.Errorf("checks %v", got)
	}
}

// The report renders from results without panicking and names every target.
func TestWriteReport(t *testing.T) {
	r := &results{cfg: config{Profile: "smoke", Rounds: 1, RateDuration: time.Second, FixedRate: 2000}, started: time.Now(),
		targets: []*target{{name: "direct", label: "direct"}, {name: "nginx", label: "nginx"}, {name: "bare-go", label: "bare"}, {name: "gateway", label: "gw"}},
		max:     map[string][]sample{}, peakAll: map[string]int64{}, peakFixed: map[string]int64{}}
	var b strings.Builder
	writeReport(&b, r)
	for _, s := range []string{"## Targets", "## Pipeline", "| gw |"} {
		if !strings.Contains(b.String(), s) {
			t.Errorf("report lacks %q", s)
		}
	}
}

// The bench tier is added to the shipped price list, which stays valid.
func TestWithBenchTier(t *testing.T) {
	base, err := os.ReadFile("../../../gateway/internal/pricing/pricing.yaml")
	if err != nil {
		t.Fatal(err)
	}
	out, err := withBenchTier(base)
	if err != nil || !strings.Contains(string(out), "\ntiers:\n  bench: ") || !strings.Contains(string(out), "free:") {
		t.Fatalf("%v\n%s", err, out)
	}
	if _, err := withBenchTier([]byte("operations: {}\n")); err == nil {
		t.Fatal("no tiers block accepted")
	}
}

// TestBareDrainBothForms: the bare reader reads a stream holding events
// one per message and group-committed batches.
func TestBareDrainBothForms(t *testing.T) {
	t.Parallel()
	u := testenv.StartUsage(t)
	evs := testenv.UsageEvents(100, 3)
	u.Publish(evs[:10], nil)
	u.PublishBatches(evs[10:], 30)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	stream, err := u.JS.Stream(ctx, usagev1.StreamName)
	if err != nil {
		t.Fatal(err)
	}
	res, err := bareDrain(ctx, stream)
	if err != nil {
		t.Fatal(err)
	}
	if res.events != 13 {
		t.Errorf("bare drain settled %d messages, want 13", res.events)
	}
}

func TestClusterConfig(t *testing.T) {
	dir := t.TempDir()
	env := map[string]string{"BENCH_DATABASE_URL": "postgres://x@127.0.0.1:1/postgres", "BENCH_REDIS_ADDR": "127.0.0.1:2",
		"BENCH_NATS_URL": "nats://127.0.0.1:3", "BENCH_BIN_DIR": dir, "BENCH_WORK_DIR": dir, "BENCH_OUT": dir + "/r.md",
		"BENCH_PROFILE": "smoke"}
	c, err := configFromEnv(func(k string) string { return env[k] })
	if err != nil || c.Cluster.enabled() {
		t.Fatalf("without CLUSTER=1: %v, %+v", err, c.Cluster)
	}
	env["BENCH_CLUSTER_NATS_URL"] = "nats://r3:bench@127.0.0.1:4,nats://r3:bench@127.0.0.1:5"
	env["BENCH_CLUSTER_R1_NATS_URL"] = "nats://r1:bench@127.0.0.1:4"
	env["BENCH_CLUSTER_REDIS_ADDRS"] = "127.0.0.1:6,127.0.0.1:7,127.0.0.1:8"
	env["BENCH_CLUSTER_NATS_PIDS"] = "11,12,13"
	env["BENCH_CLUSTER_REDIS_PIDS"] = "21,22,23"
	env["BENCH_CLUSTER_NATS_MONITORS"] = "http://127.0.0.1:9,http://127.0.0.1:10"
	c, err = configFromEnv(func(k string) string { return env[k] })
	if err != nil {
		t.Fatal(err)
	}
	cl := c.Cluster
	if !cl.enabled() || len(cl.NATSPIDs) != 3 || cl.NATSPIDs[2] != 13 || len(cl.RedisPIDs) != 3 || len(cl.NATSMonitors) != 2 ||
		cl.PipelineEvents != 2000 {
		t.Fatalf("%+v", cl)
	}
	env["BENCH_CLUSTER_R1_NATS_URL"] = ""
	env["BENCH_CLUSTER_REDIS_PIDS"] = "21,x"
	_, err = configFromEnv(func(k string) string { return env[k] })
	if err == nil || !strings.Contains(err.Error(), "go together") || !strings.Contains(err.Error(), `"x" is not a process ID`) {
		t.Fatalf("error %v", err)
	}
}

// clusterResults is a run with the single-node gateway and both cluster
// sides, every figure chosen so the ratios are exact.
func clusterResults() *results {
	run := func(rate float64, served int, cpu float64, extra map[string]float64, msgs, bytes, route uint64) []sample {
		return []sample{{rate: rate, requests: served, cpu: cpu, extraCPU: extra, jsMsgs: msgs, jsBytes: bytes, route: route,
			lat: latencies{p50: 2 * time.Millisecond, p99: 8 * time.Millisecond}}}
	}
	r := &results{cfg: config{Profile: "smoke", Rounds: 1, RateDuration: time.Second, FixedRate: 2000, ManyKeys: 10000},
		started: time.Now(), peakAll: map[string]int64{}, peakFixed: map[string]int64{"cluster-r3": 100 * 1024},
		targets: []*target{{name: "direct", label: "direct"}, {name: "gateway", label: "gateway, full path (2 enterprise keys)"},
			{name: "cluster-r3", label: "cluster R3"}, {name: "cluster-r1", label: "cluster R1"}},
		max: map[string][]sample{
			// 1,000 calls each: CPU seconds × 1,000 = µs per call.
			"gateway":    run(2000, 1000, 0.2, map[string]float64{"redis": 0.05, "nats": 0.05}, 100, 25_000, 0),
			"cluster-r3": run(1000, 1000, 0.3, map[string]float64{"redis": 0.06, "nats": 0.18, "lb": 0.04}, 80, 22_000, 90_000),
			"cluster-r1": run(1250, 1000, 0.28, map[string]float64{"redis": 0.06, "nats": 0.09, "lb": 0.04}, 80, 22_000, 30_000),
		},
		keys: map[string][]sample{"keys-many": {{rate: 1900}}, "keys-many-cluster": {{rate: 950}}},
		pipeline: pipelineResult{ackLatency: latencies{p50: time.Millisecond}, publishRate: 9000,
			billing: drainResult{events: 20000, seconds: 1}, aggregator: drainResult{events: 30000, seconds: 1}},
		cluster: []clusterPipeline{
			{side: "r3", replicas: 3, ack: latencies{p50: 3 * time.Millisecond}, publishRate: 3000, billing: drainResult{events: 18000, seconds: 1}},
			{side: "r1", replicas: 1, ack: latencies{p50: 1500 * time.Microsecond}, publishRate: 6000, billing: drainResult{events: 19000, seconds: 1}},
		},
	}
	return r
}

func TestClusterRows(t *testing.T) {
	rows := map[string][3]float64{}
	for _, cr := range clusterResults().clusterRows() {
		rows[cr.what] = cr.v
	}
	near := func(what string, want [3]float64) {
		t.Helper()
		got, ok := rows[what]
		if !ok {
			t.Errorf("no row %q", what)
			return
		}
		for i := range want {
			if math.IsNaN(want[i]) != math.IsNaN(got[i]) || (!math.IsNaN(want[i]) && math.Abs(got[i]-want[i]) > 1e-6) {
				t.Errorf("%s: %v, want %v", what, got, want)
				return
			}
		}
	}
	nan := math.NaN()
	near("max throughput, req/s", [3]float64{2000, 1000, 1250})
	near("gateway CPU per call, all instances, µs", [3]float64{200, 300, 280})
	near("load balancer (nginx) CPU per call, µs", [3]float64{nan, 40, 40})
	near("nats-server CPU per call, all nodes, µs", [3]float64{50, 180, 90})
	near("CPU per call of all of these, µs", [3]float64{300, 580, 470})
	near("JetStream messages per call", [3]float64{0.1, 0.08, 0.08})
	near("JetStream bytes stored per call, one replica", [3]float64{25, 22, 22})
	near("bytes between the NATS servers per call (routes)", [3]float64{nan, 90, 30})
	near("max throughput with 10000 keys, req/s", [3]float64{1900, 950, nan})
	near("acknowledged publish one at a time, p50, ms", [3]float64{1, 3, 1.5})
	near("billing worker, events/s read and written to Postgres", [3]float64{20000, 18000, 19000})
	near("aggregator, events/s read and written to Postgres", [3]float64{30000, nan, nan})
}

// The cluster's section is written when the run had the cluster, with the
// row the capacity model reads, and not otherwise.
func TestWriteReportCluster(t *testing.T) {
	var b strings.Builder
	writeReport(&b, clusterResults())
	for _, s := range []string{"## The cluster beside one node (CLUSTER=1)",
		"| nats-server CPU per call, all nodes, µs | 50.0 | 180.0 | 90.0 | 3.60 | 2.00 |",
		"**What R3 costs against R1** (same servers, same rounds): throughput × 0.80, nats-server CPU per call × 2.00",
		"bytes between the servers per call × 3.00"} {
		if !strings.Contains(b.String(), s) {
			t.Errorf("report lacks %q", s)
		}
	}
	r := clusterResults()
	delete(r.max, "cluster-r3")
	delete(r.max, "cluster-r1")
	r.cluster = nil
	b.Reset()
	writeReport(&b, r)
	if strings.Contains(b.String(), "## The cluster beside") {
		t.Error("a run without the cluster has its section")
	}
}

func TestSignedSaysTheDirection(t *testing.T) {
	for x, want := range map[float64]string{-63.5461: "63.546 ms lower", 0.45: "0.450 ms higher", math.NaN(): "–"} {
		if got := signed(x); got != want {
			t.Errorf("signed(%v) = %q, want %q", x, got, want)
		}
	}
}

// TestNginxConfig: the one template writes both nginx configurations, the
// stand-in's plain keep-alive proxy and the gateways' balancer as
// .ci/cluster.sh runs it.
func TestNginxConfig(t *testing.T) {
	plain, err := nginxConfig{Prefix: "/p", Workers: "auto", Keepalive: 128,
		Sites: []nginxSite{{Upstream: "standin", Listen: 12, Servers: []int{11}}}}.render()
	if err != nil {
		t.Fatal(err)
	}
	lb, err := nginxConfig{Prefix: "/p", Workers: "2", Gateways: true, Keepalive: 64,
		Sites: []nginxSite{{Upstream: "r3", Listen: 5, Servers: []int{1, 2}}, {Upstream: "r1", Listen: 6, Servers: []int{3, 4}}}}.render()
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name      string
		conf      string
		want      []string
		wantCount map[string]int
	}{
		{"plain", string(plain), []string{"worker_processes auto;", "upstream standin {\n        server 127.0.0.1:11;\n        keepalive 128;",
			"listen 127.0.0.1:12;", "proxy_pass http://standin;", "pid /p/nginx.pid;"},
			map[string]int{"proxy_next_upstream": 0, "proxy_buffering off": 0, "server {": 1}},
		{"gateways", string(lb), []string{"as .ci/cluster.sh writes it", "worker_processes 2;",
			"upstream r3 {\n        server 127.0.0.1:1 max_fails=1 fail_timeout=2s;\n        server 127.0.0.1:2 max_fails=1 fail_timeout=2s;\n        keepalive 64;",
			"upstream r1 {\n        server 127.0.0.1:3 max_fails=1 fail_timeout=2s;\n        server 127.0.0.1:4 max_fails=1 fail_timeout=2s;",
			"listen 127.0.0.1:5;", "listen 127.0.0.1:6;", "proxy_pass http://r3;", "proxy_pass http://r1;"},
			map[string]int{"proxy_next_upstream error timeout;": 2, "proxy_request_buffering off;": 2, "server {": 2}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for _, w := range tc.want {
				if !strings.Contains(tc.conf, w) {
					t.Errorf("no %q in\n%s", w, tc.conf)
				}
			}
			for w, n := range tc.wantCount {
				if got := strings.Count(tc.conf, w); got != n {
					t.Errorf("%q %d times, want %d", w, got, n)
				}
			}
			if strings.Count(tc.conf, "{") != strings.Count(tc.conf, "}") {
				t.Errorf("unbalanced braces:\n%s", tc.conf)
			}
		})
	}
}
