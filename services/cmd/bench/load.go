package main

import (
	"context"
	"math"
	"net/http"
	"os"
	"slices"
	"sync/atomic"
	"time"

	vegeta "github.com/tsenart/vegeta/v12/lib"
)

// target is one thing the load generator measures.
type target struct {
	name   string // direct, nginx, bare-go, gateway
	label  string // for the report
	url    string
	header http.Header
	body   []byte
	// keys, when set, are the X-API-Key values the requests take in turn
	// (one header set per key, built once).
	keys []string
	// stream, when set, reads the USAGE stream's messages and bytes, so a
	// run can report JetStream messages and bytes per served call.
	stream func() streamCounts
	// routeBytes, when set, is the bytes the NATS servers have sent each
	// other over their routes so far (a cluster's replication traffic).
	routeBytes func() uint64
	// pids are the processes whose CPU and memory are the target's cost
	// (the proxy; for direct, the stand-in itself).
	pids func() []int
	// extra are processes that also work for the target (Redis, NATS for
	// the gateway; every server of a cluster, its load balancer), reported
	// separately.
	extra map[string][]int
}

// streamCounts is the state of a stream at one moment.
type streamCounts struct{ msgs, bytes uint64 }

// sample is one run of one target.
type sample struct {
	target    string
	requested float64 // req/s asked for; 0 = closed loop
	requests  int
	errors    int
	firstErr  string
	seconds   float64 // from the first request sent to the last answer
	rate      float64 // successful answers per second
	lat       latencies
	cpu       float64            // CPU seconds of the target's pids during the run
	extraCPU  map[string]float64 // CPU seconds of the extra processes
	genCPU    float64            // CPU seconds of the load generator (this process)
	jsMsgs    uint64             // messages the USAGE stream gained during the run
	jsBytes   uint64             // bytes it gained (one replica's copy)
	route     uint64             // bytes sent between NATS servers during the run
}

// latencies are quantiles of the successful requests' latencies.
type latencies struct {
	p50, p90, p99, p999, max time.Duration
}

// attackOpts describes one run.
type attackOpts struct {
	duration time.Duration
	rate     int // 0: closed loop with `workers` workers
	workers  int // closed loop: exactly this many; open loop: at most this many
}

// attack runs one load test against t and measures it.
func attack(ctx context.Context, t *target, o attackOpts) sample {
	tr := targeter(t)
	opts := []func(*vegeta.Attacker){
		vegeta.KeepAlive(true), vegeta.HTTP2(false), vegeta.Proxy(nil), vegeta.MaxBody(0),
		vegeta.Timeout(10 * time.Second), vegeta.Connections(o.workers), vegeta.MaxConnections(o.workers),
	}
	var pacer vegeta.Pacer
	if o.rate == 0 {
		opts = append(opts, vegeta.Workers(uint64(o.workers)), vegeta.MaxWorkers(uint64(o.workers)))
		pacer = vegeta.ConstantPacer{Freq: 0, Per: time.Second}
	} else {
		opts = append(opts, vegeta.Workers(uint64(min(o.workers, 16))), vegeta.MaxWorkers(uint64(o.workers)))
		pacer = vegeta.ConstantPacer{Freq: o.rate, Per: time.Second}
	}
	a := vegeta.NewAttacker(opts...)
	pids := t.pids()
	var st0 streamCounts
	var route0 uint64
	if t.stream != nil {
		st0 = t.stream()
	}
	if t.routeBytes != nil {
		route0 = t.routeBytes()
	}
	cpu0, gen0 := groupCPU(pids), selfCPU()
	extra0 := map[string]float64{}
	for n, p := range t.extra {
		extra0[n] = groupCPU(p)
	}
	s := sample{target: t.name, requested: float64(o.rate), extraCPU: map[string]float64{}}
	lat := make([]time.Duration, 0, 1<<16)
	var first, last time.Time
	results := a.Attack(tr, pacer, o.duration, t.name)
	stopped := false
	for r := range results {
		if ctx.Err() != nil && !stopped {
			a.Stop()
			stopped = true
		}
		s.requests++
		if first.IsZero() || r.Timestamp.Before(first) {
			first = r.Timestamp
		}
		if end := r.Timestamp.Add(r.Latency); end.After(last) {
			last = end
		}
		if r.Code != http.StatusOK || r.Error != "" {
			s.errors++
			if s.firstErr == "" {
				s.firstErr = r.Error
			}
			continue
		}
		lat = append(lat, r.Latency)
	}
	s.cpu = groupCPU(pids) - cpu0
	s.genCPU = selfCPU() - gen0
	if t.stream != nil {
		st := t.stream()
		s.jsMsgs, s.jsBytes = gained(st0.msgs, st.msgs), gained(st0.bytes, st.bytes)
	}
	if t.routeBytes != nil {
		s.route = gained(route0, t.routeBytes())
	}
	for n, p := range t.extra {
		s.extraCPU[n] = groupCPU(p) - extra0[n]
	}
	if !first.IsZero() {
		s.seconds = last.Sub(first).Seconds()
	}
	if s.seconds > 0 {
		s.rate = float64(len(lat)) / s.seconds
	}
	s.lat = quantiles(lat)
	return s
}

// gained is b − a, or 0 when a reading failed (a counter does not shrink).
func gained(a, b uint64) uint64 {
	if b < a {
		return 0
	}
	return b - a
}

// targeter sends t's request, taking t's keys in turn when it has some.
func targeter(t *target) vegeta.Targeter {
	if len(t.keys) == 0 {
		return vegeta.NewStaticTargeter(vegeta.Target{Method: http.MethodPost, URL: t.url, Body: t.body, Header: t.header})
	}
	headers := make([]http.Header, len(t.keys))
	for i, k := range t.keys {
		headers[i] = t.header.Clone()
		headers[i].Set("X-API-Key", k)
	}
	var n atomic.Uint64
	return func(tgt *vegeta.Target) error {
		i := n.Add(1)
		*tgt = vegeta.Target{Method: http.MethodPost, URL: t.url, Body: t.body, Header: headers[i%uint64(len(headers))]}
		return nil
	}
}

func selfCPU() float64 {
	v, _ := cpuSeconds(os.Getpid())
	return v
}

// quantiles sorts d and reads the nearest-rank quantiles.
func quantiles(d []time.Duration) latencies {
	if len(d) == 0 {
		return latencies{}
	}
	slices.Sort(d)
	q := func(p float64) time.Duration {
		i := int(math.Ceil(p*float64(len(d)))) - 1
		return d[max(0, min(i, len(d)-1))]
	}
	return latencies{p50: q(0.50), p90: q(0.90), p99: q(0.99), p999: q(0.999), max: d[len(d)-1]}
}

// median of xs (the mean of the middle two for an even count); NaN for none.
func median(xs []float64) float64 {
	if len(xs) == 0 {
		return math.NaN()
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	n := len(s)
	if n%2 == 1 {
		return s[n/2]
	}
	return (s[n/2-1] + s[n/2]) / 2
}

// medianDur is median over durations.
func medianDur(ds []time.Duration) time.Duration {
	xs := make([]float64, len(ds))
	for i, d := range ds {
		xs[i] = float64(d)
	}
	return time.Duration(median(xs))
}
