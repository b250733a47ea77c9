// Command capacity turns the per-request costs measured by `make bench`
// (docs/benchmarks.md) into the capacity model of docs/scaling.md: cores,
// Redis shards, JetStream streams, billing workers and Postgres write rates
// for a given request rate. It prints the model's table; `make capacity`
// writes it into docs/scaling.md, so the model moves when the code does.
//
// usage: capacity [benchmarks.md]                 print the table (default docs/benchmarks.md)
//
//	capacity -write scaling.md [benchmarks.md]   replace the table between the
//	                                             capacity markers of scaling.md
package main

import (
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"regexp"
	"strconv"
	"strings"
)

func main() {
	args := os.Args[1:]
	doc := ""
	if len(args) >= 2 && args[0] == "-write" {
		doc, args = args[1], args[2:]
	}
	path := "docs/benchmarks.md"
	if len(args) > 0 {
		path = args[0]
	}
	var err error
	if doc == "" {
		err = run(path, os.Stdout)
	} else {
		err = rewrite(doc, path)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "capacity:", err)
		os.Exit(1)
	}
}

const (
	beginMark = "<!-- capacity:begin (make capacity writes this part) -->\n"
	endMark   = "<!-- capacity:end -->"
)

// rewrite replaces what stands between the markers of doc with the table.
func rewrite(doc, report string) error {
	b, err := os.ReadFile(doc)
	if err != nil {
		return fmt.Errorf("read %s: %w", doc, err)
	}
	s := string(b)
	i, j := strings.Index(s, beginMark), strings.Index(s, endMark)
	if i < 0 || j < i {
		return fmt.Errorf("%s has no capacity markers", doc)
	}
	var out strings.Builder
	if err := run(report, &out); err != nil {
		return err
	}
	s = s[:i+len(beginMark)] + out.String() + s[j:]
	return os.WriteFile(doc, []byte(s), 0o644)
}

func run(path string, w io.Writer) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("read the benchmark report: %w", err)
	}
	c, err := parse(string(b))
	if err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	return write(w, c, []float64{10_000, 100_000, 1_000_000})
}

// Costs are the measured costs per served request (one event).
type Costs struct {
	GatewayCPU    float64 // µs of gateway CPU per request, full path at max throughput
	RedisCPU      float64 // µs of redis-server CPU per request (the larger of the two runs)
	NATSCPU       float64 // µs of nats-server CPU per request at one replica (the larger of the two runs)
	RedisCmds     float64 // Redis commands per hot request
	EventsPerMsg  float64 // events per JetStream message at saturation (group commit)
	BillingRate   float64 // events/s of one billing worker on one Postgres
	BillingCPU    float64 // µs of billing-worker CPU per event
	AggregatorCPU float64 // µs of aggregator CPU per event
	// NATSCPUR3 is µs of nats-server CPU per request over the three nodes
	// of a cluster at three replicas (`CLUSTER=1 make bench`; 0 when the
	// report has no cluster section: then NATSCPU × replicas stands in).
	NATSCPUR3 float64
}

// clusterNATS is the R3 column of the cluster section's nats-server row.
var clusterNATS = regexp.MustCompile(`(?m)^\| nats-server CPU per call, all nodes, µs \| [^|]* \| ([\d.]+) \|`)

var figures = []struct {
	name string
	re   *regexp.Regexp
	set  func(*Costs, float64)
}{
	{"gateway CPU per request", regexp.MustCompile(`(?m)^\| gateway, full path \(\d+ enterprise keys\) \| \d+ \|[^|]*\|[^|]*\|[^|]*\| ([\d.]+) \|`),
		func(c *Costs, v float64) { c.GatewayCPU = v }},
	{"redis CPU per request", regexp.MustCompile(`CPU of redis per gateway request[^:]*: ([\d.]+) µs`),
		func(c *Costs, v float64) { c.RedisCPU = max(c.RedisCPU, v) }},
	{"nats CPU per request", regexp.MustCompile(`CPU of nats per gateway request[^:]*: ([\d.]+) µs`),
		func(c *Costs, v float64) { c.NATSCPU = max(c.NATSCPU, v) }},
	{"Redis commands per request", regexp.MustCompile(`(?m)^\| BenchmarkEdgeFullPath/parallel-\d+ \|[^|]*\|[^|]*\|[^|]*\| ([\d.]+) \|`),
		func(c *Costs, v float64) { c.RedisCmds = v }},
	{"events per JetStream message", regexp.MustCompile(`([\d.]+) events per message\.`),
		func(c *Costs, v float64) { c.EventsPerMsg = v }},
	{"billing-worker events/s", regexp.MustCompile(`(?m)^\| billing-worker \| \d+ \| [\d.]+ \| (\d+) \|`),
		func(c *Costs, v float64) { c.BillingRate = v }},
	{"billing-worker CPU per event", regexp.MustCompile(`(?m)^\| billing-worker \| \d+ \| [\d.]+ \| \d+ \|[^|]*\|[^|]*\| ([\d.]+) \|`),
		func(c *Costs, v float64) { c.BillingCPU = v }},
	{"aggregator CPU per event", regexp.MustCompile(`(?m)^\| aggregator \| \d+ \| [\d.]+ \| \d+ \|[^|]*\|[^|]*\| ([\d.]+) \|`),
		func(c *Costs, v float64) { c.AggregatorCPU = v }},
}

// parse reads every figure of the model from the report; a figure it cannot
// find is an error (the report's wording changed: update the pattern).
func parse(report string) (Costs, error) {
	var c Costs
	var errs []error
	for _, f := range figures {
		ms := f.re.FindAllStringSubmatch(report, -1)
		if len(ms) == 0 {
			errs = append(errs, fmt.Errorf("no figure for %s", f.name))
			continue
		}
		for _, m := range ms {
			v, err := strconv.ParseFloat(m[1], 64)
			if err != nil || v <= 0 {
				errs = append(errs, fmt.Errorf("%s: %q is not a positive number", f.name, m[1]))
				continue
			}
			f.set(&c, v)
		}
	}
	// Optional: only a run with CLUSTER=1 measured it.
	if m := clusterNATS.FindStringSubmatch(report); m != nil {
		if v, err := strconv.ParseFloat(m[1], 64); err == nil && v > 0 {
			c.NATSCPUR3 = v
		}
	}
	return c, errors.Join(errs...)
}

// The model's assumptions (not measured here; docs/scaling.md says why).
const (
	coreBudget        = 0.6    // a gateway core planned at 60 % busy
	redisShardBudget  = 0.5    // a Redis shard (one thread) planned at 50 % of a core, headroom for failover
	replicas          = 3      // the USAGE stream's replicas
	streamMsgCeiling  = 10_000 // acknowledged R3 messages/s one stream is planned for
	postgresRowBudget = 50_000 // ledger rows/s one Postgres primary is planned for
)

// Plan is the model at one request rate.
type Plan struct {
	RPS             float64
	GatewayCores    float64
	RedisOps        float64 // commands/s over the cluster
	RedisShards     int
	JetStreamMsgs   float64 // messages/s into the stream(s)
	Streams         int
	NATSCores       float64 // over the cluster, all replicas
	LedgerRows      float64 // rows/s (billing) = events/s
	UsageRows       float64 // api_usage rows/s (aggregator) = events/s
	BillingWorkers  int
	WorkerCores     float64 // billing worker + aggregator
	LedgerPartition int     // Postgres primaries (ledger partitions by key)
}

func model(c Costs, rps float64) Plan {
	p := Plan{RPS: rps}
	p.GatewayCores = rps * c.GatewayCPU / 1e6 / coreBudget
	p.RedisOps = rps * c.RedisCmds
	p.RedisShards = max(3, int(math.Ceil(rps*c.RedisCPU/1e6/redisShardBudget)))
	p.JetStreamMsgs = rps / c.EventsPerMsg
	p.Streams = max(1, int(math.Ceil(p.JetStreamMsgs/streamMsgCeiling)))
	if c.NATSCPUR3 > 0 {
		p.NATSCores = rps * c.NATSCPUR3 / 1e6
	} else {
		p.NATSCores = rps * c.NATSCPU / 1e6 * replicas
	}
	p.LedgerRows = rps
	p.UsageRows = rps
	p.BillingWorkers = max(1, int(math.Ceil(rps/c.BillingRate)))
	p.WorkerCores = rps * (c.BillingCPU + c.AggregatorCPU) / 1e6
	p.LedgerPartition = max(1, int(math.Ceil(rps/postgresRowBudget)))
	return p
}

func write(w io.Writer, c Costs, rates []float64) error {
	r3 := fmt.Sprintf("not measured (no cluster section in the report): the model takes %d × the one-replica figure", replicas)
	if c.NATSCPUR3 > 0 {
		r3 = fmt.Sprintf("%.1f µs over the three nodes at three replicas (`CLUSTER=1 make bench`), which the NATS column uses", c.NATSCPUR3)
	}
	_, err := fmt.Fprintf(w, "Measured per request: gateway %.1f µs CPU, Redis %.3f commands and %.1f µs CPU, NATS %.1f µs CPU at one replica and %s, %.1f events per JetStream message; billing worker %.0f events/s (%.1f µs CPU each), aggregator %.1f µs CPU per event.\n\n",
		c.GatewayCPU, c.RedisCmds, c.RedisCPU, c.NATSCPU, r3, c.EventsPerMsg, c.BillingRate, c.BillingCPU, c.AggregatorCPU)
	if err != nil {
		return err
	}
	fmt.Fprintln(w, "| req/s | gateway cores | Redis ops/s | Redis shards (masters) | JetStream msgs/s | streams | NATS cores (R3, all nodes) | ledger rows/s | api_usage rows/s | billing workers | worker cores | Postgres primaries for the ledger |")
	fmt.Fprintln(w, "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
	for _, r := range rates {
		p := model(c, r)
		_, err = fmt.Fprintf(w, "| %s | %.0f | %s | %d | %s | %d | %.0f | %s | %s | %d | %.0f | %d |\n",
			num(p.RPS), math.Ceil(p.GatewayCores), num(p.RedisOps), p.RedisShards, num(p.JetStreamMsgs), p.Streams,
			math.Ceil(p.NATSCores), num(p.LedgerRows), num(p.UsageRows), p.BillingWorkers, math.Ceil(p.WorkerCores), p.LedgerPartition)
		if err != nil {
			return err
		}
	}
	return nil
}

// num prints n rounded, with thousands separators.
func num(n float64) string {
	s := strconv.FormatInt(int64(math.Round(n)), 10)
	for i := len(s) - 3; i > 0; i -= 3 {
		s = s[:i] + "," + s[i:]
	}
	return s
}
