package main

import (
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// The model reads every figure it needs from the report make bench writes;
// when the report's wording changes this fails, not the model silently.
func TestParsesTheBenchmarkReport(t *testing.T) {
	b, err := os.ReadFile(filepath.Join("..", "..", "..", "docs", "benchmarks.md"))
	if err != nil {
		t.Fatal(err)
	}
	c, err := parse(string(b))
	if err != nil {
		t.Fatal(err)
	}
	if c.RedisCmds < 1 || c.EventsPerMsg < 1 || c.GatewayCPU <= 0 {
		t.Fatalf("implausible figures %+v", c)
	}
}

func TestModelArithmetic(t *testing.T) {
	c := Costs{GatewayCPU: 300, RedisCPU: 50, NATSCPU: 20, RedisCmds: 1, EventsPerMsg: 10,
		BillingRate: 20_000, BillingCPU: 20, AggregatorCPU: 30}
	p := model(c, 100_000)
	// 100k × 300 µs = 30 cores busy, planned at 60 %: 50 cores.
	if math.Abs(p.GatewayCores-50) > 1e-9 {
		t.Errorf("gateway cores %v, want 50", p.GatewayCores)
	}
	// 100k × 50 µs = 5 cores of Redis, half a core per shard: 10 shards.
	if p.RedisShards != 10 || p.RedisOps != 100_000 {
		t.Errorf("redis %d shards, %v ops/s; want 10 and 100,000", p.RedisShards, p.RedisOps)
	}
	// 10 events per message: 10,000 msgs/s, one stream's planned ceiling.
	if p.JetStreamMsgs != 10_000 || p.Streams != 1 {
		t.Errorf("jetstream %v msgs/s in %d streams; want 10,000 in 1", p.JetStreamMsgs, p.Streams)
	}
	if math.Abs(p.NATSCores-6) > 1e-9 || p.BillingWorkers != 5 || p.LedgerPartition != 2 || math.Abs(p.WorkerCores-5) > 1e-9 {
		t.Errorf("plan %+v", p)
	}
	// A small site still runs three masters (the smallest Redis Cluster).
	if small := model(c, 10); small.RedisShards != 3 || small.Streams != 1 {
		t.Errorf("small plan %+v", small)
	}
}

// A report with the cluster's section gives the R3 cost of NATS measured,
// and the model uses it instead of three times the one-replica figure.
func TestClusterFigureReplacesTheEstimate(t *testing.T) {
	b, err := os.ReadFile(filepath.Join("..", "..", "..", "docs", "benchmarks.md"))
	if err != nil {
		t.Fatal(err)
	}
	// The section as the harness writes it (services/cmd/bench's
	// TestWriteReportCluster checks the same row).
	report := clusterNATS.ReplaceAllString(string(b), "") +
		"\n| nats-server CPU per call, all nodes, µs | 50.0 | 180.0 | 90.0 | 3.60 | 2.00 |\n"
	c, err := parse(report)
	if err != nil {
		t.Fatal(err)
	}
	if c.NATSCPUR3 != 180 {
		t.Fatalf("R3 NATS CPU %v, want 180", c.NATSCPUR3)
	}
	// 100k × 180 µs = 18 cores over the cluster.
	if p := model(c, 100_000); math.Abs(p.NATSCores-18) > 1e-9 {
		t.Errorf("NATS cores %v, want 18", p.NATSCores)
	}
	c.NATSCPUR3 = 0
	if p := model(c, 100_000); math.Abs(p.NATSCores-100_000*c.NATSCPU/1e6*3) > 1e-9 {
		t.Errorf("NATS cores without the cluster figure %v", p.NATSCores)
	}
}

func TestRewriteReplacesOnlyTheMarkedPart(t *testing.T) {
	dir := t.TempDir()
	report, _ := os.ReadFile(filepath.Join("..", "..", "..", "docs", "benchmarks.md"))
	rp := filepath.Join(dir, "benchmarks.md")
	dp := filepath.Join(dir, "scaling.md")
	if err := os.WriteFile(rp, report, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dp, []byte("before\n"+beginMark+"old\n"+endMark+"\nafter\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := rewrite(dp, rp); err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(dp)
	s := string(b)
	if strings.Contains(s, "old\n") || !strings.HasPrefix(s, "before\n") || !strings.HasSuffix(s, endMark+"\nafter\n") ||
		!strings.Contains(s, "| 1,000,000 |") {
		t.Fatalf("rewritten:\n%s", s)
	}
}
