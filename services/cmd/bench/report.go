package main

import (
	_ "embed"
	"fmt"
	"io"
	"math"
	"strconv"
	"strings"
	"time"
)

// notes is the hand-written part of the report: the profile's reading and
// the suggestions. The harness copies it in unchanged.
//
//go:embed notes.md
var notes string

// rateRun is the open-loop runs at one rate.
type rateRun struct {
	label   string
	rate    int
	fixed   bool // the absolute rate of the latency and RSS targets
	samples map[string][]sample
}

// results is everything one run measured.
type results struct {
	cfg       config
	started   time.Time
	elapsed   time.Duration
	targets   []*target
	max       map[string][]sample
	rates     []rateRun
	peakAll   map[string]int64 // kB, the whole HTTP phase up to the fixed rate
	peakFixed map[string]int64 // kB, the fixed-rate phase
	pipeline  pipelineResult
	machine   machine
	goBench   string
	pprofTop  string
	busyCPU   float64 // machine-wide CPU seconds during the HTTP phase
	ourCPU    float64 // of which the harness, its children and the servers
	loadavg   string  // /proc/loadavg before the run
	// keyTargets and keys: the per-key cost comparison (few vs many keys).
	keyTargets []*target
	keys       map[string][]sample
	firstCalls map[string]float64 // first calls of fresh keys served per second
	fsync      latencies          // the disk's own fsync in the NATS data folder
	cluster    []clusterPipeline  // CLUSTER=1: the pipeline on each side's stream
}

func (r *results) maxRate(name string) float64 { return median(rates(r.max[name])) }

func (r *results) fixed() *rateRun {
	for i := range r.rates {
		if r.rates[i].fixed {
			return &r.rates[i]
		}
	}
	return nil
}

func medLat(ss []sample, f func(latencies) time.Duration) time.Duration {
	ds := make([]time.Duration, len(ss))
	for i, s := range ss {
		ds[i] = f(s.lat)
	}
	return medianDur(ds)
}

func p50(l latencies) time.Duration  { return l.p50 }
func p99(l latencies) time.Duration  { return l.p99 }
func p999(l latencies) time.Duration { return l.p999 }

// cpuPerRequest is the median over runs of CPU seconds per successful
// request, in µs.
func cpuPerRequest(ss []sample, cpu func(sample) float64) float64 {
	xs := make([]float64, 0, len(ss))
	for _, s := range ss {
		if ok := s.requests - s.errors; ok > 0 {
			xs = append(xs, cpu(s)/float64(ok)*1e6)
		}
	}
	return median(xs)
}

// overloaded tells whether the target fell short of the asked rate.
func overloaded(ss []sample, rate int) bool {
	return median(rates(ss)) < 0.95*float64(rate)
}

func errorsOf(ss []sample) (n int, first string) {
	for _, s := range ss {
		n += s.errors
		if first == "" {
			first = s.firstErr
		}
	}
	return n, first
}

// goBenchLine is one line of `go test -bench` output.
type goBenchLine struct {
	name    string
	n       int64
	metrics map[string]float64 // by unit: ns/op, B/op, allocs/op, redis-cmds/op, ...
}

func parseGoBench(out string) []goBenchLine {
	var lines []goBenchLine
	for _, l := range strings.Split(out, "\n") {
		f := strings.Fields(l)
		if len(f) < 4 || !strings.HasPrefix(f[0], "Benchmark") {
			continue
		}
		n, err := strconv.ParseInt(f[1], 10, 64)
		if err != nil {
			continue
		}
		b := goBenchLine{name: f[0], n: n, metrics: map[string]float64{}}
		for i := 2; i+1 < len(f); i += 2 {
			v, err := strconv.ParseFloat(f[i], 64)
			if err != nil {
				break
			}
			b.metrics[f[i+1]] = v
		}
		lines = append(lines, b)
	}
	return lines
}

// fullPathBench finds the serial full-path handler benchmark.
func fullPathBench(lines []goBenchLine) (goBenchLine, bool) {
	for _, l := range lines {
		if strings.HasPrefix(l.name, "BenchmarkEdgeFullPath/serial") {
			return l, true
		}
	}
	return goBenchLine{}, false
}

// check is one benchmark target and its verdict.
type check struct {
	what, measured, want string
	ok, missing          bool
}

func (c check) verdict() string {
	switch {
	case c.missing:
		return "n/a"
	case c.ok:
		return "PASS"
	}
	return "MISS"
}

func ms(d time.Duration) string { return fmt.Sprintf("%.3f ms", float64(d)/1e6) }

func (r *results) checks() []check {
	var cs []check
	gw, ng, bare := r.maxRate("gateway"), r.maxRate("nginx"), r.maxRate("bare-go")
	ratio := func(what string, a, b, want float64) {
		x := a / b
		cs = append(cs, check{what: what, measured: fmt.Sprintf("%.2f (%.0f / %.0f req/s)", x, a, b),
			want: fmt.Sprintf("≥ %.2f", want), ok: x >= want, missing: math.IsNaN(x)})
	}
	ratio("full path ÷ nginx, max throughput", gw, ng, 0.40)
	ratio("full path ÷ features off (bare Go proxy), max throughput", gw, bare, 0.75)
	if ss := r.max["gateway"]; len(ss) > 0 {
		var msgs, served float64
		for _, s := range ss {
			msgs += float64(s.jsMsgs)
			served += float64(s.requests - s.errors)
		}
		per := msgs / served
		cs = append(cs, check{what: fmt.Sprintf("JetStream messages per served call at saturation (%d connections)", r.cfg.Connections),
			measured: fmt.Sprintf("%.3f (%.0f messages for %.0f calls)", per, msgs, served), want: "≤ 0.1", ok: per <= 0.1, missing: served == 0})
		if _, ok := ss[0].extraCPU["nats"]; ok {
			natsCPU := cpuPerRequest(ss, func(s sample) float64 { return s.extraCPU["nats"] })
			cs = append(cs, check{what: "NATS CPU per served call at saturation", measured: fmt.Sprintf("%.1f µs", natsCPU),
				want: "≤ 15 µs", ok: natsCPU <= 15})
		}
	}
	if f := r.fixed(); f != nil {
		added := func(name string, q func(latencies) time.Duration) time.Duration {
			return medLat(f.samples[name], q) - medLat(f.samples["direct"], q)
		}
		gw50, gw99 := added("gateway", p50), added("gateway", p99)
		note := ""
		if overloaded(f.samples["gateway"], f.rate) {
			note = " (gateway overloaded at this rate)"
		}
		fs := r.fsync
		cs = append(cs,
			check{what: fmt.Sprintf("added p50 over direct at %d req/s", f.rate), measured: ms(gw50) + note,
				want: fmt.Sprintf("≤ fsync p50 + 0.5 ms = %s", ms(fs.p50+500*time.Microsecond)), ok: gw50 <= fs.p50+500*time.Microsecond, missing: fs.p50 == 0},
			check{what: fmt.Sprintf("added p99 over direct at %d req/s", f.rate), measured: ms(gw99) + note,
				want: fmt.Sprintf("≤ 3 ms + fsync p99 = %s", ms(fs.p99+3*time.Millisecond)), ok: gw99 <= fs.p99+3*time.Millisecond, missing: fs.p99 == 0},
		)
	}
	few, many := median(rates(r.keys["keys-few"])), median(rates(r.keys["keys-many"]))
	cs = append(cs, check{what: fmt.Sprintf("throughput with %d keys ÷ with %d keys", r.cfg.ManyKeys, r.cfg.FewKeys),
		measured: fmt.Sprintf("%.2f (%.0f / %.0f req/s)", many/few, many, few), want: "≥ 0.90", ok: many/few >= 0.9, missing: math.IsNaN(many / few)})
	gwCPU := cpuPerRequest(r.max["gateway"], func(s sample) float64 { return s.cpu })
	bareCPU := cpuPerRequest(r.max["bare-go"], func(s sample) float64 { return s.cpu })
	cs = append(cs, check{what: "gateway CPU per request ÷ bare Go proxy's (max throughput)",
		measured: fmt.Sprintf("%.2f (%.1f / %.1f µs)", gwCPU/bareCPU, gwCPU, bareCPU), want: "≤ 1.30", ok: gwCPU/bareCPU <= 1.3, missing: math.IsNaN(gwCPU / bareCPU)})
	fp, ok := fullPathBench(parseGoBench(r.goBench))
	rc, rok := fp.metrics["redis-cmds/op"]
	pg, pok := fp.metrics["pg-stmts/op"]
	cs = append(cs,
		// go-redis keeps idle connections open in the background (HELLO and
		// CLIENT SETINFO on each): up to one such command per 100 requests is not the hot path.
		check{what: "Redis commands per hot request", measured: fmt.Sprintf("%.3f", rc), want: "1 (≤ 1.01: connection handshakes)",
			ok: rc >= 1 && rc <= 1.01, missing: !ok || !rok},
		// The last-used time is flushed in one batched statement every few
		// seconds: below one statement per 1,000 requests is background work.
		check{what: "Postgres statements per hot request", measured: fmt.Sprintf("%.4f", pg), want: "0 (< 0.001: batched background writes)",
			ok: pg < 0.001, missing: !ok || !pok},
	)
	p := r.pipeline
	for _, d := range []drainResult{p.billing, p.aggregator} {
		x := d.rate() / gw
		cs = append(cs, check{what: d.name + " events/s ÷ full-path max req/s", measured: fmt.Sprintf("%.2f (%.0f / %.0f)", x, d.rate(), gw),
			want: "≥ 3", ok: x >= 3, missing: d.events == 0})
	}
	scaled := ""
	if p.replayEvents != 1_000_000 {
		scaled = fmt.Sprintf(" (extrapolated from %d events in %.1f s)", p.replayEvents, p.replaySeconds)
	}
	cs = append(cs, check{what: "replay of 1 M events", measured: fmt.Sprintf("%.1f s%s", p.replay1M(), scaled), want: "≤ 60 s",
		ok: p.replay1M() <= 60 && p.replayExit == 0, missing: p.replayEvents == 0})
	if f := r.fixed(); f != nil {
		kb := r.peakFixed["gateway"]
		cs = append(cs, check{what: fmt.Sprintf("gateway peak RSS at %d req/s", f.rate), measured: fmt.Sprintf("%.1f MB", float64(kb)/1024),
			want: "≤ 64 MB", ok: kb > 0 && kb <= 64*1024, missing: kb == 0})
	}
	return cs
}

// printf writes one piece of the report.
type printf func(format string, a ...any)

// reportSections are the report's sections in order, each written from
// the results alone (the cluster's is in clusterreport.go).
var reportSections = []func(printf, *results){
	writeIntro, writeMachine, writeMethod, writeMaxThroughput, writeKeysInUse, writeFixedRates, writeGoBench, writePipeline,
	writeCluster, writeTargets, writeProfile, writeNotes,
}

// writeReport renders the Markdown report.
func writeReport(w io.Writer, r *results) {
	p := func(format string, a ...any) { fmt.Fprintf(w, format, a...) }
	for _, section := range reportSections {
		section(p, r)
	}
}

// writeNotes copies the hand-written notes in.
func writeNotes(p printf, _ *results) { p("%s", notes) }

// writeIntro writes the title and where the report comes from.
func writeIntro(p printf, r *results) {
	cfg := r.cfg
	p("# Benchmarks: the gateway against a direct call and against nginx\n\n")
	p("Generated by `make bench` (`.ci/bench.sh` → `bin/bench run`, source in `services/cmd/bench/`) on %s, "+
		"profile `%s`, in %s. Do not edit by hand: run `make bench` again.\n\n",
		r.started.UTC().Format("2006-01-02 15:04 UTC"), cfg.Profile, r.elapsed.Round(time.Second))
}

// writeMachine writes the machine, the software versions and how busy the machine was.
func writeMachine(p printf, r *results) {
	m := r.machine
	p("## Machine and software\n\n")
	p("| | |\n|---|---|\n")
	p("| CPU | %d × %s |\n| Memory | %s |\n| Kernel | %s |\n| OS | %s |\n| Go | %s |\n", m.cpus, m.cpuModel, m.memory, m.kernel, m.os, m.goVersion)
	for _, v := range m.versions {
		p("| %s | %s |\n", v[0], strings.ReplaceAll(v[1], "|", "/"))
	}
	p("| GOMAXPROCS | %s, for every Go process (gateway, stand-in, bare proxy, load generator) |\n", m.gomaxprocs)
	p("| GOGC | %s |\n\n", m.gogc)
	p("Everything runs on this one machine and shares its cores: the load generator, the stand-in, the proxy under test, " +
		"Redis, NATS and PostgreSQL. Ratios from one run are what the targets compare; absolute figures move with the machine.\n\n")
	if r.busyCPU > 0 {
		other := max(r.busyCPU-r.ourCPU, 0)
		p("**Interference**: load average before the run %s. During the HTTP phase the machine was busy for %.0f CPU seconds, "+
			"%.0f of them (%.0f %%) in processes other than the benchmark's (other work on the machine, e.g. tests of "+
			"other sessions, and PostgreSQL). Figures from a run with a large share are pessimistic and noisy.\n\n",
			r.loadavg, r.busyCPU, other, 100*other/r.busyCPU)
	}
}

// writeMethod writes what each target is and how every figure is measured.
func writeMethod(p printf, r *results) {
	cfg := r.cfg
	p("## What runs and how it is measured\n\n")
	p("- **Request**: `POST` with body `%s` (`Content-Type: application/json`); the stand-in answers a small JSON document "+
		"(one BM25 result). Direct, nginx and the bare proxy get `POST /search`; the gateway gets `POST /v1/search` with `X-API-Key`.\n", searchBody)
	p("- **direct**: the load generator against the search stand-in (`bin/search`).\n")
	p("- **nginx**: `worker_processes auto`, `access_log off`, upstream `keepalive 128`, `proxy_http_version 1.1`, " +
		"`proxy_set_header Connection \"\"`, no auth.\n")
	p("- **bare Go proxy (features off)**: the gateway has no switch that turns its features off, so the baseline is a bare " +
		"`httputil.ReverseProxy` (`bench proxy`, a separate process) with the gateway's transport settings " +
		"(keep-alive pool of 512 idle connections per host, HTTP/1.1, no compression) and nothing else.\n")
	p("- **gateway, full path**: `bin/gateway` with %d keys of the shipped `enterprise` tier (1,000 req/min, 50,000 credits each), "+
		"created through the management API after a login at the dev issuer and taken in turn by the load generator: key from "+
		"the in-process cache, one EVALSHA (rate limit + credit hold), the backend call, the usage event group-committed to "+
		"JetStream and its batch acknowledged before the answer. LOG_LEVEL=warn.\n", cfg.Keys)
	if len(r.targets) > 4 {
		p("- **gateway, JetStream without per-write fsync (diagnostic)**: a second `bin/gateway`, same database, Redis and key, " +
			"against a second nats-server with JetStream's default sync interval (fsync every 2 minutes). Not a production " +
			"setting (an acknowledgement would not mean \"on disk\"); it shows how much of the full path's cost is JetStream's fsync. " +
			"It is in no target.\n")
	}
	if len(r.max["cluster-r3"]) > 0 {
		p("- **cluster R3, cluster R1** (`CLUSTER=1`): the full path scaled out, nginx in front of two gateways on a Redis Cluster " +
			"and a three-node JetStream cluster, the stream at three and at one replica; see *The cluster beside one node* below. " +
			"Their CPU per request is both gateways'; they are in no target.\n")
	}
	p("- **Servers** (own ports and data, started by `.ci/bench.sh`, nothing shared with `make up`): PostgreSQL with its " +
		"default durability settings, redis-server with `appendonly yes`, `appendfsync everysec` (as `make up`), nats-server " +
		"with JetStream `sync_interval: always` (every acknowledged write is fsynced, as `make up`).\n")
	p("- **Load generator**: vegeta v12.13.0 as a library, in the harness's process; HTTP/1.1 keep-alive, no proxy. "+
		"Closed loop: %d workers on %d connections, as fast as answers come, %s per run. Open loop: a constant rate for %s, "+
		"at most %d requests in flight (a run that cannot keep up is marked *overloaded*; its latencies then include queueing). "+
		"Each figure is the median of %d rounds; the targets alternate within every round, in a rotated order per round. "+
		"A %s closed-loop warm-up per target precedes the rounds.\n",
		cfg.Connections, cfg.Connections, cfg.MaxDuration, cfg.RateDuration, cfg.OpenWorkers, cfg.Rounds, cfg.Warmup)
	p("- **Latency** is per successful request, from sending to the last byte of the answer; quantiles by nearest rank "+
		"within a run, then the median over rounds. p99.9 of a %s run at 2,000 req/s rests on about %d samples above it: read it as a trend.\n",
		cfg.RateDuration, int(cfg.RateDuration.Seconds()*float64(cfg.FixedRate)/1000))
	p("- **CPU per request**: utime + stime of the process(es) from `/proc/<pid>/stat` over a run, divided by its successful " +
		"requests (nginx: master and workers). **Peak RSS**: VmHWM. Before the fixed-rate phase the Go proxies (bare proxy, gateways) " +
		"are restarted and warmed up at that rate for the warm-up time, and every peak is reset through `/proc/<pid>/clear_refs`, " +
		"so the fixed-rate peak is that phase's own; the whole-phase peak is read before. The billing worker is started before " +
		"that restart and runs through the fixed-rate phase, as in a deployment, so a gateway holds only the events not yet " +
		"applied (the closed-loop runs measure the gateway without it; with no billing worker at all, a gateway's index of " +
		"unapplied events grows by about 200 bytes per event).\n\n")
}

// writeMaxThroughput writes the closed-loop rates of every target.
func writeMaxThroughput(p printf, r *results) {
	p("## Max throughput (closed loop)\n\n")
	p("| target | req/s (median) | rounds | ÷ direct | ÷ nginx | CPU µs/req (target) | CPU µs/req (load generator) | errors |\n|---|---:|---|---:|---:|---:|---:|---:|\n")
	direct, nginx := r.maxRate("direct"), r.maxRate("nginx")
	for _, t := range r.targets {
		ss := r.max[t.name]
		var each []string
		for _, s := range ss {
			each = append(each, fmt.Sprintf("%.0f", s.rate))
		}
		n, _ := errorsOf(ss)
		mr := r.maxRate(t.name)
		p("| %s | %.0f | %s | %.2f | %.2f | %.1f | %.1f | %d |\n", t.label, mr, strings.Join(each, ", "), mr/direct, mr/nginx,
			cpuPerRequest(ss, func(s sample) float64 { return s.cpu }), cpuPerRequest(ss, func(s sample) float64 { return s.genCPU }), n)
	}
	if ss := r.max["gateway"]; len(ss) > 0 {
		var msgs, served float64
		for _, s := range ss {
			msgs += float64(s.jsMsgs)
			served += float64(s.requests - s.errors)
		}
		if served > 0 {
			p("\nFull path, group commit: %.0f JetStream messages for %.0f served calls, %.1f events per message.", msgs, served, served/max(msgs, 1))
		}
		for _, name := range []string{"redis", "nats"} {
			if _, ok := ss[0].extraCPU[name]; ok {
				p("\nFull path, CPU of %s per gateway request at max throughput: %.1f µs.", name,
					cpuPerRequest(ss, func(s sample) float64 { return s.extraCPU[name] }))
			}
		}
		p("\n")
	}
	p("\n")
}

// writeKeysInUse writes the full path with few and many keys, and the disk's own fsync latency.
func writeKeysInUse(p printf, r *results) {
	p("## Keys in use (closed loop)\n\n")
	p("The same full path with %d and with %d keys of the `bench` tier taken in turn (every key called once in a warm-up "+
		"first, whose rate is the last column: a key's first call builds its state from the ledger), alternating over %d rounds, so a per-key cost (cache, Redis key space, rebuilds) shows as a difference.\n\n",
		r.cfg.FewKeys, r.cfg.ManyKeys, r.cfg.Rounds)
	p("| keys | req/s (median) | rounds | CPU µs/req (gateway) | events per JetStream message | errors | first call of each key, keys/s |\n|---|---:|---|---:|---:|---:|---:|\n")
	for _, t := range r.keyTargets {
		ss := r.keys[t.name]
		var each []string
		var msgs, served float64
		for _, s := range ss {
			each = append(each, fmt.Sprintf("%.0f", s.rate))
			msgs += float64(s.jsMsgs)
			served += float64(s.requests - s.errors)
		}
		n, _ := errorsOf(ss)
		p("| %d | %.0f | %s | %.1f | %.1f | %d | %.0f |\n", len(t.keys), median(rates(ss)), strings.Join(each, ", "),
			cpuPerRequest(ss, func(s sample) float64 { return s.cpu }), served/max(msgs, 1), n, r.firstCalls[t.name])
	}
	p("\n")
	if r.fsync.p50 > 0 {
		p("**The disk's own fsync** in the NATS data folder, measured in the same run (500 × write 512 B + fsync): "+
			"p50 %s, p99 %s, max %s. With `sync_interval: always`, every JetStream acknowledgement waits for one.\n\n",
			ms(r.fsync.p50), ms(r.fsync.p99), ms(r.fsync.max))
	}
}

// writeFixedRates writes the open-loop latencies, the latency added over direct, memory and CPU at the fixed rate.
func writeFixedRates(p printf, r *results) {
	p("## Latency at fixed rates (open loop)\n\n")
	p("| rate | target | achieved req/s | p50 | p99 | p99.9 | max | CPU µs/req | errors |\n|---|---|---:|---:|---:|---:|---:|---:|---:|\n")
	for _, rr := range r.rates {
		for _, t := range r.targets {
			ss := rr.samples[t.name]
			if len(ss) == 0 {
				p("| %d req/s (%s) | %s | not run: above its max throughput (%.0f req/s) | | | | | | |\n", rr.rate, rr.label, t.label, r.maxRate(t.name))
				continue
			}
			mark := ""
			if overloaded(ss, rr.rate) {
				mark = " *overloaded*"
			}
			n, _ := errorsOf(ss)
			p("| %d req/s (%s) | %s | %.0f%s | %s | %s | %s | %s | %.1f | %d |\n", rr.rate, rr.label, t.label, median(rates(ss)), mark,
				ms(medLat(ss, p50)), ms(medLat(ss, p99)), ms(medLat(ss, p999)), ms(medLat(ss, func(l latencies) time.Duration { return l.max })),
				cpuPerRequest(ss, func(s sample) float64 { return s.cpu }), n)
		}
	}
	p("\n")
	if f := r.fixed(); f != nil {
		p("### Added latency over direct at %d req/s\n\n", f.rate)
		p("| target | added p50 | added p99 | added p99.9 |\n|---|---:|---:|---:|\n")
		for _, t := range r.targets[1:] {
			a := func(q func(latencies) time.Duration) string {
				return ms(medLat(f.samples[t.name], q) - medLat(f.samples["direct"], q))
			}
			p("| %s | %s | %s | %s |\n", t.label, a(p50), a(p99), a(p999))
		}
		p("\n### Memory and CPU at %d req/s\n\n", f.rate)
		p("| target | peak RSS at %d req/s | peak RSS, whole HTTP phase | CPU µs/req |\n|---|---:|---:|---:|\n", f.rate)
		for _, t := range r.targets {
			p("| %s | %.1f MB | %.1f MB | %.1f |\n", t.label, float64(r.peakFixed[t.name])/1024, float64(max(r.peakAll[t.name], r.peakFixed[t.name]))/1024,
				cpuPerRequest(f.samples[t.name], func(s sample) float64 { return s.cpu }))
		}
		if ss := f.samples["gateway"]; len(ss) > 0 {
			for _, name := range []string{"redis", "nats"} {
				if _, ok := ss[0].extraCPU[name]; ok {
					p("\nFull path at %d req/s, CPU of %s per gateway request: %.1f µs.", f.rate, name,
						cpuPerRequest(ss, func(s sample) float64 { return s.extraCPU[name] }))
				}
			}
			p("\n")
		}
		p("\n")
	}
}

// writeGoBench writes the handler chain's Go benchmark.
func writeGoBench(p printf, r *results) {
	p("## Counts per request: the handler chain (Go benchmark)\n\n")
	lines := parseGoBench(r.goBench)
	if len(lines) == 0 {
		p("Not run (BENCH_GO_BENCH is empty).\n\n")
	} else {
		p("`go test -run '^$' -bench 'BenchmarkEdgeFullPath$|BenchmarkBareProxy$' -benchmem ./gateway/internal/proxy/` " +
			"(`gateway/internal/proxy/edge_bench_test.go`, run by `.ci/bench.sh` before the harness): the gateway wired exactly as " +
			"`bin/gateway` wires it (`config.FromEnv`, `server.Connect`, `server.Build`) against real PostgreSQL, Redis and NATS (JetStream, sync always); " +
			"requests go straight into its Echo handler (no client socket), the backend is the search stand-in in its own process, so " +
			"B/op and allocs/op are the gateway's own plus the benchmark's request and recorder. Redis commands and Postgres statements " +
			"are counted on the wire, by relays between the gateway and the servers that parse RESP and the PostgreSQL protocol " +
			"(simple queries and executes); the relays add two loopback hops to ns/op. *serial*: one request at a time; " +
			"*parallel*: 16 goroutines per CPU (connections opened while it ramps up add their handshake commands).\n\n")
		p("| benchmark | ns/op | B/op | allocs/op | Redis cmds/op | Postgres stmts/op |\n|---|---:|---:|---:|---:|---:|\n")
		for _, l := range lines {
			cell := func(unit, f string) string {
				if v, ok := l.metrics[unit]; ok {
					return fmt.Sprintf(f, v)
				}
				return "–"
			}
			p("| %s | %s | %s | %s | %s | %s |\n", l.name, cell("ns/op", "%.0f"), cell("B/op", "%.0f"), cell("allocs/op", "%.0f"),
				cell("redis-cmds/op", "%.3f"), cell("pg-stmts/op", "%.4f"))
		}
		p("\n")
	}
}

// writePipeline writes the consumers' drain rates, the publish latency and the replay.
func writePipeline(p printf, r *results) {
	p("## Pipeline\n\n")
	pl := r.pipeline
	p("The USAGE stream held %d events for the rate measurements: %d published by the gateway during the HTTP runs, the rest "+
		"synthetic (valid events of 100 keys of this month, published without Nats-Msg-Id, at most 2,000 in flight, at %.0f events/s). Each consumer "+
		"reads all of them from the start, alone on the machine (the gateway idle), timed from the moment its durable "+
		"consumer exists until nothing is pending or unacknowledged.\n\n", pl.streamEvents, pl.gatewayEvents, pl.publishRate)
	p("**JetStream acknowledged publish** (the durable event of every full-path request): one at a time, event-sized, to a file stream: "+
		"p50 %s, p99 %s with `sync_interval: always`", ms(pl.ackLatency.p50), ms(pl.ackLatency.p99))
	if pl.ackLatencyNoFsync.p50 > 0 {
		p(" (without per-write fsync: p50 %s, p99 %s)", ms(pl.ackLatencyNoFsync.p50), ms(pl.ackLatencyNoFsync.p99))
	}
	if pl.publishRate > 0 {
		p(". With 2,000 publishes in flight, the synthetic events above were acknowledged at %.0f events/s: with one fsync per message "+
			"that is the ceiling of the whole edge's full path on this machine, whatever the gateway does, as long as every request "+
			"waits for its own JetStream acknowledgement", pl.publishRate)
	}
	p(".\n\n")
	p("| consumer | events | seconds | events/s | ÷ bare consumer | ÷ full-path max req/s | CPU µs/event |\n|---|---:|---:|---:|---:|---:|---:|\n")
	gw := r.maxRate("gateway")
	for _, d := range []drainResult{pl.billing, pl.aggregator, pl.bare, pl.catchUp} {
		if d.events == 0 {
			continue
		}
		name := d.name
		if d == pl.catchUp {
			name = "aggregator (catching up with the replay's extra events)"
		}
		cpu := "–"
		if d.cpu > 0 {
			cpu = fmt.Sprintf("%.1f", d.cpu/float64(d.events)*1e6)
		}
		p("| %s | %d | %.1f | %.0f | %.2f | %.1f | %s |\n", name, d.events, d.seconds, d.rate(), d.rate()/pl.bare.rate(), d.rate()/gw, cpu)
	}
	p("\nBilling worker and aggregator run with their defaults (batches of 500 events per transaction). The bare consumer is a " +
		"durable pull consumer configured like theirs (explicit acks, 2,000 unacknowledged at most) that fetches 500 at a time, " +
		"decodes and validates each event and acks it; no database.\n\n")
	p("**Replay**: `bin/aggregator replay --from-start` over %d events took %.1f s (exit %d; %s)", pl.replayEvents, pl.replaySeconds, pl.replayExit, pl.replayLine)
	if pl.replayEvents != 1_000_000 {
		p("; linearly extrapolated to 1 M events: %.1f s", pl.replay1M())
	}
	p(". The aggregator had processed the same events first, so a correct replay finds no difference (exit 0).\n\n")
}

// writeTargets writes every target with its verdict.
func writeTargets(p printf, r *results) {
	p("## Targets\n\n| target | measured | wanted | verdict |\n|---|---|---|---|\n")
	for _, c := range r.checks() {
		p("| %s | %s | %s | **%s** |\n", c.what, c.measured, c.want, c.verdict())
	}
	p("\n")
}

// writeProfile writes the CPU profile of the handler chain, when there is one.
func writeProfile(p printf, r *results) {
	if strings.TrimSpace(r.pprofTop) != "" {
		p("## CPU profile of the handler chain\n\n`go test -bench BenchmarkEdgeFullPath/parallel -cpuprofile` over the in-process full path, "+
			"then `go tool pprof -top`: the flat view of the whole process (the embedded NATS server and the counting relays run in it), "+
			"and the cumulative view of the gateway's own code:\n\n```\n%s\n```\n\n", strings.TrimSpace(r.pprofTop))
	}
}
