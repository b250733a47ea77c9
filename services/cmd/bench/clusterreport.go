package main

import (
	"fmt"
	"math"
	"strings"
	"time"
)

// perCall is the median over runs of f(sample) per successful request
// (NaN when no run served one).
func perCall(ss []sample, f func(sample) float64) float64 {
	xs := make([]float64, 0, len(ss))
	for _, s := range ss {
		if ok := s.requests - s.errors; ok > 0 {
			xs = append(xs, f(s)/float64(ok))
		}
	}
	return median(xs)
}

// clusterRow is one figure of the side-by-side table: one node, cluster R3,
// cluster R1 (NaN: not measured for that column).
type clusterRow struct {
	what   string
	v      [3]float64
	format string // of each value
}

// clusterColumns are the targets of the table's columns: one node, cluster
// R3, cluster R1.
var clusterColumns = [3]string{"gateway", "cluster-r3", "cluster-r1"}

// newClusterRow is one figure of the table, f(target, column) in each column.
func newClusterRow(what, format string, f func(name string, i int) float64) clusterRow {
	cr := clusterRow{what: what, format: format}
	for i, n := range clusterColumns {
		cr.v[i] = f(n, i)
	}
	return cr
}

// clusterRows computes the side-by-side figures from the run's samples:
// closed loop, fixed rate, many keys, pipeline.
func (r *results) clusterRows() []clusterRow {
	rows := r.clusterMaxRows()
	rows = append(rows, r.clusterFixedRows()...)
	rows = append(rows, r.clusterKeysRows()...)
	return append(rows, r.clusterPipelineRows()...)
}

// clusterMaxRows are the closed-loop figures: throughput, CPU of every
// engine per call, JetStream's messages and bytes per call.
func (r *results) clusterMaxRows() []clusterRow {
	nan := math.NaN()
	extra := func(key string) func(string, int) float64 {
		return func(n string, _ int) float64 {
			ss := r.max[n]
			if len(ss) == 0 {
				return nan
			}
			if _, ok := ss[0].extraCPU[key]; !ok {
				return nan
			}
			return cpuPerRequest(ss, func(s sample) float64 { return s.extraCPU[key] })
		}
	}
	return []clusterRow{
		newClusterRow("max throughput, req/s", "%.0f", func(n string, _ int) float64 { return r.maxRate(n) }),
		newClusterRow("gateway CPU per call, all instances, µs", "%.1f", func(n string, _ int) float64 {
			return cpuPerRequest(r.max[n], func(s sample) float64 { return s.cpu })
		}),
		newClusterRow("load balancer (nginx) CPU per call, µs", "%.1f", extra("lb")),
		newClusterRow("redis-server CPU per call, all masters, µs", "%.1f", extra("redis")),
		newClusterRow("nats-server CPU per call, all nodes, µs", "%.1f", extra("nats")),
		newClusterRow("CPU per call of all of these, µs", "%.1f", func(n string, _ int) float64 {
			ss := r.max[n]
			if len(ss) == 0 {
				return nan
			}
			return cpuPerRequest(ss, func(s sample) float64 {
				t := s.cpu
				for _, v := range s.extraCPU {
					t += v
				}
				return t
			})
		}),
		newClusterRow("JetStream messages per call", "%.3f", func(n string, _ int) float64 {
			return perCall(r.max[n], func(s sample) float64 { return float64(s.jsMsgs) })
		}),
		newClusterRow("JetStream bytes stored per call, one replica", "%.0f", func(n string, _ int) float64 {
			return perCall(r.max[n], func(s sample) float64 { return float64(s.jsBytes) })
		}),
		newClusterRow("bytes between the NATS servers per call (routes)", "%.0f", func(n string, i int) float64 {
			if i == 0 {
				return nan
			}
			return perCall(r.max[n], func(s sample) float64 { return float64(s.route) })
		}),
	}
}

// clusterFixedRows are the figures at the fixed rate, if it ran.
func (r *results) clusterFixedRows() []clusterRow {
	f := r.fixed()
	if f == nil {
		return nil
	}
	nan := math.NaN()
	q := func(qf func(latencies) time.Duration) func(string, int) float64 {
		return func(n string, _ int) float64 {
			if len(f.samples[n]) == 0 {
				return nan
			}
			return float64(medLat(f.samples[n], qf)) / 1e6
		}
	}
	return []clusterRow{
		newClusterRow(fmt.Sprintf("achieved req/s at %d req/s", f.rate), "%.0f", func(n string, _ int) float64 { return median(rates(f.samples[n])) }),
		newClusterRow(fmt.Sprintf("p50 at %d req/s, ms", f.rate), "%.3f", q(p50)),
		newClusterRow(fmt.Sprintf("p99 at %d req/s, ms", f.rate), "%.3f", q(p99)),
		newClusterRow(fmt.Sprintf("gateway CPU per call at %d req/s, all instances, µs", f.rate), "%.1f", func(n string, _ int) float64 {
			return cpuPerRequest(f.samples[n], func(s sample) float64 { return s.cpu })
		}),
		newClusterRow(fmt.Sprintf("nats-server CPU per call at %d req/s, all nodes, µs", f.rate), "%.1f", func(n string, _ int) float64 {
			ss := f.samples[n]
			if len(ss) == 0 {
				return nan
			}
			return cpuPerRequest(ss, func(s sample) float64 { return s.extraCPU["nats"] })
		}),
		newClusterRow(fmt.Sprintf("gateway peak RSS at %d req/s, per instance, MB", f.rate), "%.1f", func(n string, i int) float64 {
			if r.peakFixed[n] == 0 {
				return nan
			}
			per := 1.0
			if i > 0 {
				per = 2
			}
			return float64(r.peakFixed[n]) / 1024 / per
		}),
	}
}

// clusterKeysRows is the throughput with many keys, if the cluster ran it.
func (r *results) clusterKeysRows() []clusterRow {
	if len(r.keys["keys-many-cluster"]) == 0 {
		return nil
	}
	return []clusterRow{newClusterRow(fmt.Sprintf("max throughput with %d keys, req/s", r.cfg.ManyKeys), "%.0f", func(_ string, i int) float64 {
		switch i {
		case 0:
			return median(rates(r.keys["keys-many"]))
		case 1:
			return median(rates(r.keys["keys-many-cluster"]))
		}
		return math.NaN()
	})}
}

// clusterPipelineRows are the pipeline's figures: the single node's from
// r.pipeline, each side's from its clusterPipeline.
func (r *results) clusterPipelineRows() []clusterRow {
	side := func(i int) *clusterPipeline {
		want := map[int]string{1: "r3", 2: "r1"}[i]
		for k := range r.cluster {
			if r.cluster[k].side == want {
				return &r.cluster[k]
			}
		}
		return nil
	}
	pl := r.pipeline
	// figure is one row: one the single node's value, of a side's.
	figure := func(what, format string, one float64, of func(*clusterPipeline) float64) clusterRow {
		return newClusterRow(what, format, func(_ string, i int) float64 {
			if i == 0 {
				return one
			}
			if cp := side(i); cp != nil {
				return of(cp)
			}
			return math.NaN()
		})
	}
	return []clusterRow{
		figure("acknowledged publish one at a time, p50, ms", "%.3f", float64(pl.ackLatency.p50)/1e6,
			func(cp *clusterPipeline) float64 { return float64(cp.ack.p50) / 1e6 }),
		figure("acknowledged publish one at a time, p99, ms", "%.3f", float64(pl.ackLatency.p99)/1e6,
			func(cp *clusterPipeline) float64 { return float64(cp.ack.p99) / 1e6 }),
		figure("events/s published, one per message, 2,000 in flight", "%.0f", nonZero(pl.publishRate),
			func(cp *clusterPipeline) float64 { return nonZero(cp.publishRate) }),
		figure("billing worker, events/s read and written to Postgres", "%.0f", nonZero(pl.billing.rate()),
			func(cp *clusterPipeline) float64 { return nonZero(cp.billing.rate()) }),
		figure("aggregator, events/s read and written to Postgres", "%.0f", nonZero(pl.aggregator.rate()),
			func(cp *clusterPipeline) float64 { return nonZero(cp.aggregator.rate()) }),
	}
}

func nonZero(x float64) float64 {
	if x == 0 {
		return math.NaN()
	}
	return x
}

func cell(format string, v float64) string {
	if math.IsNaN(v) || math.IsInf(v, 0) {
		return "–"
	}
	return fmt.Sprintf(format, v)
}

func ratioCell(a, b float64) string {
	if math.IsNaN(a) || math.IsNaN(b) || b == 0 {
		return "–"
	}
	return fmt.Sprintf("%.2f", a/b)
}

// writeCluster writes the cluster's section, when the run had one: the
// scaled-out full path beside the single-node one, measured in the same
// rounds.
func writeCluster(p printf, r *results) {
	if len(r.max["cluster-r3"]) == 0 {
		return
	}
	writeClusterMethod(p)
	rows := r.clusterRows()
	writeClusterTable(p, rows)
	writeClusterSummary(p, rows)
	writeClusterPipelines(p, r)
}

// writeClusterMethod writes what the cluster targets are.
func writeClusterMethod(p printf) {
	p("## The cluster beside one node (CLUSTER=1)\n\n")
	p("`CLUSTER=1 make bench` starts, besides the single-node servers, three nats-servers routed into one JetStream cluster " +
		"(every write fsynced, `sync_interval: always`) and a Redis Cluster of three masters (`redis-cli --cluster create`, " +
		"append-only, fsync every second), as `make up-cluster` runs them. Two pairs of `bin/gateway` run on them by settings " +
		"alone (`REDIS_ADDRS`, `NATS_URL` listing the three servers, `USAGE_STREAM_REPLICAS`), each pair behind its own port " +
		"of one nginx configured as `.ci/cluster.sh` configures it (round robin, keep-alive to the gateways, `worker_processes 2`): " +
		"**cluster R3** publishes to a `USAGE` stream at three replicas, **cluster R1** to one at one replica, in a second " +
		"account of the same servers, so the difference between them is replication alone (same processes, disk, routes). " +
		"Both use the single-node gateway's database, price list and keys and get the same load (the same enterprise keys in " +
		"turn, the seed's search body), as targets of the same rounds as the single-node ones above, so every ratio below is " +
		"of runs taken minutes apart under the same interference. The billing worker and the aggregator read each side's " +
		"stream from the cluster into the same PostgreSQL.\n\n")
	p("Each figure is the median over the rounds (CPU per call: per run, then the median). *One node* is the single-node " +
		"full path above (no load balancer, one redis-server, one nats-server); the cluster's CPU figures add up every " +
		"process of a kind (both gateways, three masters, three nats-servers).\n\n")
}

// writeClusterTable writes the side-by-side table of rows.
func writeClusterTable(p printf, rows []clusterRow) {
	p("| figure (median) | one node | cluster R3 | cluster R1 | R3 ÷ one node | R3 ÷ R1 |\n|---|---:|---:|---:|---:|---:|\n")
	for _, cr := range rows {
		p("| %s | %s | %s | %s | %s | %s |\n", cr.what, cell(cr.format, cr.v[0]), cell(cr.format, cr.v[1]), cell(cr.format, cr.v[2]),
			ratioCell(cr.v[1], cr.v[0]), ratioCell(cr.v[1], cr.v[2]))
	}
	p("\n")
}

// writeClusterSummary writes what replication costs (R3 against R1) and
// what the cluster costs against one node, in words, from rows.
func writeClusterSummary(p printf, rows []clusterRow) {
	get := func(prefix string) [3]float64 {
		for _, cr := range rows {
			if strings.HasPrefix(cr.what, prefix) {
				return cr.v
			}
		}
		return [3]float64{math.NaN(), math.NaN(), math.NaN()}
	}
	thr, nats, all := get("max throughput, req/s"), get("nats-server CPU per call, all nodes"), get("CPU per call of all")
	route, p50v, p99v, ack := get("bytes between the NATS servers"), get("p50 at "), get("p99 at "), get("acknowledged publish one at a time, p50")
	p("**What R3 costs against R1** (same servers, same rounds): throughput × %s, nats-server CPU per call × %s "+
		"(%s against %s µs), bytes between the servers per call × %s (%s against %s), p50 %s and p99 %s at the fixed rate, "+
		"an acknowledged publish alone %s at p50.\n\n",
		ratioCell(thr[1], thr[2]), ratioCell(nats[1], nats[2]), cell("%.1f", nats[1]), cell("%.1f", nats[2]),
		ratioCell(route[1], route[2]), cell("%.0f", route[1]), cell("%.0f", route[2]),
		signed(p50v[1]-p50v[2]), signed(p99v[1]-p99v[2]), signed(ack[1]-ack[2]))
	p("**The cluster against one node**: throughput × %s, CPU per call of gateway, load balancer, Redis and NATS together × %s "+
		"(%s against %s µs). On this machine the cluster cannot be faster: its nine server processes and the load generator share "+
		"the same two cores and one disk, every call takes one more hop (nginx), and each replica fsyncs the same write on the "+
		"same disk. What carries over to separate machines is the CPU per call of each engine, which the capacity model "+
		"in [scaling.md](scaling.md) reads from this table (`make capacity`).\n\n",
		ratioCell(thr[1], thr[0]), ratioCell(all[1], all[0]), cell("%.1f", all[1]), cell("%.1f", all[0]))
}

// writeClusterPipelines writes each side's pipeline and the cluster's errors.
func writeClusterPipelines(p printf, r *results) {
	for _, cp := range r.cluster {
		p("- Cluster %s pipeline: the stream held %d events (%d from the cluster's gateways, the rest synthetic as above, "+
			"%.0f bytes each on average); billing worker %d events in %.1f s, aggregator %d in %.1f s.\n",
			strings.ToUpper(cp.side), cp.streamEvents, cp.gatewayEvents, float64(cp.streamBytes)/math.Max(float64(cp.streamEvents), 1),
			cp.billing.events, cp.billing.seconds, cp.aggregator.events, cp.aggregator.seconds)
	}
	if n, first := errorsOf(append(append([]sample{}, r.max["cluster-r3"]...), r.max["cluster-r1"]...)); n > 0 {
		p("- Errors in the cluster's closed-loop runs: %d (first: %s).\n", n, first)
	}
	p("\n")
}

// signed says a difference of milliseconds in words: "0.450 ms higher",
// "63.546 ms lower".
func signed(x float64) string {
	switch {
	case math.IsNaN(x):
		return "–"
	case x < 0:
		return fmt.Sprintf("%.3f ms lower", -x)
	}
	return fmt.Sprintf("%.3f ms higher", x)
}
