package server

import (
	"context"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// depProber exports the readiness checks as gateway_dependency_up, one
// series per dependency: 1 while its last probe succeeded, 0 after a failure.
// The alert rules read it; /ready probes on its own, on each request.
type depProber struct {
	checks []Check
	up     *prometheus.GaugeVec
}

func newDepProber(reg prometheus.Registerer, checks []Check) *depProber {
	p := &depProber{checks: checks, up: prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "gateway_dependency_up",
		Help: "Whether the last probe of a dependency (postgres, redis, nats) succeeded: 1 yes, 0 no.",
	}, []string{"dependency"})}
	reg.MustRegister(p.up)
	return p
}

// probe runs every check once, each within timeout.
func (p *depProber) probe(ctx context.Context, timeout time.Duration) {
	for _, ch := range p.checks {
		cctx, cancel := context.WithTimeout(ctx, timeout)
		err := ch.Probe(cctx)
		cancel()
		if ctx.Err() != nil {
			return // shutting down: a canceled probe says nothing
		}
		v := 1.0
		if err != nil {
			v = 0
		}
		p.up.WithLabelValues(ch.Name).Set(v)
	}
}

// Run probes at once and then every interval until ctx ends.
func (p *depProber) Run(ctx context.Context, interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		p.probe(ctx, 2*time.Second)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}
