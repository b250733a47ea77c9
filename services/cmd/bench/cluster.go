package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"path/filepath"
	"strconv"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	usagev1 "github.com/mana/apigw/proto/usage/v1"
	"github.com/mana/apigw/services/testenv/proc"
)

// clusterSide is one account of the JetStream cluster and the gateways that
// publish to it: behind one port of the load balancer, on the Redis Cluster.
type clusterSide struct {
	name        string // r3, r1
	replicas    int    // of its USAGE stream
	natsURL     string // the cluster's client URLs with the account's credentials
	url         string // its port of the load balancer
	gateways    []*proc.Proc
	gatewayURLs []string
	js          jetstream.JetStream
}

// clusterStack is the scaled-out full path: nginx in front of two gateways
// per side, every gateway on the Redis Cluster and the JetStream cluster.
type clusterStack struct {
	r3, r1 *clusterSide
	lb     *proc.Proc
}

func (c *clusterStack) sides() []*clusterSide { return []*clusterSide{c.r3, c.r1} }

// setupCluster starts two gateways per side with the settings of a cluster
// (REDIS_ADDRS, the NATS_URL list, USAGE_STREAM_REPLICAS) and otherwise the
// single-node gateway's environment, then nginx in front of them.
func (h *harness) setupCluster(ctx context.Context, gwEnv []string) error {
	cc := h.cfg.Cluster
	c := &clusterStack{
		r3: &clusterSide{name: "r3", replicas: 3, natsURL: cc.NATSURL},
		r1: &clusterSide{name: "r1", replicas: 1, natsURL: cc.R1NATSURL},
	}
	h.cl = c
	var gwPorts []int
	for _, side := range c.sides() {
		for i := 1; i <= 2; i++ {
			port, err := proc.FreePort()
			if err != nil {
				return err
			}
			name := fmt.Sprintf("gateway-%s-%d", side.name, i)
			env := append(append([]string{}, gwEnv...), "PORT="+strconv.Itoa(port), "NATS_URL="+side.natsURL,
				"REDIS_ADDRS="+cc.RedisAddrs, "USAGE_STREAM_REPLICAS="+strconv.Itoa(side.replicas),
				"SPOOL_DIR="+filepath.Join(h.cfg.WorkDir, "spool-"+name), "GATEWAY_ID=bench-"+side.name+"-"+strconv.Itoa(i))
			p, err := h.start(name, h.bin("gateway"), env)
			if err != nil {
				return err
			}
			u := fmt.Sprintf("http://127.0.0.1:%d", port)
			// One at a time: the first creates the side's stream.
			if err := p.WaitReady(ctx, u+"/ready", 90*time.Second, nil); err != nil {
				return err
			}
			side.gateways = append(side.gateways, p)
			side.gatewayURLs = append(side.gatewayURLs, u)
			gwPorts = append(gwPorts, port)
		}
		nc, err := nats.Connect(side.natsURL, nats.Name("bench-stream-count-"+side.name), nats.Timeout(5*time.Second))
		if err != nil {
			return fmt.Errorf("nats (cluster, %s): %w", side.name, err)
		}
		h.closers = append(h.closers, nc.Close)
		if side.js, err = jetstream.New(nc); err != nil {
			return fmt.Errorf("jetstream (cluster, %s): %w", side.name, err)
		}
		if err := checkReplicas(ctx, side.js, side.replicas); err != nil {
			return fmt.Errorf("cluster %s: %w", side.name, err)
		}
	}
	lbPorts := make([]int, 2)
	for i := range lbPorts {
		var err error
		if lbPorts[i], err = proc.FreePort(); err != nil {
			return err
		}
	}
	c.r3.url = fmt.Sprintf("http://127.0.0.1:%d", lbPorts[0])
	c.r1.url = fmt.Sprintf("http://127.0.0.1:%d", lbPorts[1])
	// nginx as .ci/cluster.sh runs it in front of the gateways, with one
	// listener per side.
	var err error
	if c.lb, err = h.startNginx("nginx-lb", nginxConfig{
		Prefix: filepath.Join(h.cfg.WorkDir, "nginx-lb"), Workers: "2", Gateways: true, Keepalive: 64,
		Sites: []nginxSite{
			{Upstream: "r3", Listen: lbPorts[0], Servers: gwPorts[0:2]},
			{Upstream: "r1", Listen: lbPorts[1], Servers: gwPorts[2:4]},
		},
	}); err != nil {
		return err
	}
	for _, side := range c.sides() {
		if err := c.lb.WaitReady(ctx, side.url+"/ready", 30*time.Second, nil); err != nil {
			return err
		}
	}
	h.logger.Info("cluster stack ready", "r3", c.r3.url, "r1", c.r1.url, "redis", cc.RedisAddrs)
	return nil
}

// checkReplicas fails unless the USAGE stream of js has want replicas: the
// comparison means nothing if a setting did not take.
func checkReplicas(ctx context.Context, js jetstream.JetStream, want int) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	s, err := js.Stream(ctx, usagev1.StreamName)
	if err != nil {
		return fmt.Errorf("usage stream: %w", err)
	}
	if got := s.CachedInfo().Config.Replicas; max(got, 1) != want {
		return fmt.Errorf("usage stream has %d replicas, want %d", got, want)
	}
	return nil
}

// clusterTarget is one side's full path through the load balancer with keys.
func (h *harness) clusterTarget(side *clusterSide, keys []string) *target {
	cc := h.cfg.Cluster
	lb := h.cl.lb
	return &target{
		name: "cluster-" + side.name,
		label: fmt.Sprintf("cluster %s: nginx → 2 gateways, Redis Cluster, JetStream R%d on 3 nodes (%d enterprise keys)",
			map[int]string{3: "R3", 1: "R1"}[side.replicas], side.replicas, len(keys)),
		url: side.url + "/v1/search", header: http.Header{"Content-Type": []string{"application/json"}}, body: []byte(searchBody),
		keys: keys,
		pids: func() []int {
			out := make([]int, 0, len(side.gateways))
			for _, p := range side.gateways {
				out = append(out, p.Pid())
			}
			return out
		},
		extra: map[string][]int{
			"redis": cc.RedisPIDs, "nats": cc.NATSPIDs, "lb": append([]int{lb.Pid()}, children(lb.Pid())...),
		},
		stream:     h.streamState(side.js),
		routeBytes: h.routeBytes,
	}
}

// routeBytes sums what every server of the cluster has sent over its
// routes (monitoring endpoint /routez); 0 if a server does not answer.
func (h *harness) routeBytes() uint64 {
	var sum uint64
	c := &http.Client{Timeout: 2 * time.Second}
	for _, m := range h.cfg.Cluster.NATSMonitors {
		resp, err := c.Get(m + "/routez")
		if err != nil {
			h.logger.Warn("routez", "server", m, "err", err)
			return 0
		}
		var rz struct {
			Routes []struct {
				OutBytes uint64 `json:"out_bytes"`
			} `json:"routes"`
		}
		err = json.NewDecoder(resp.Body).Decode(&rz)
		resp.Body.Close()
		if err != nil {
			h.logger.Warn("routez", "server", m, "err", err)
			return 0
		}
		for _, r := range rz.Routes {
			sum += r.OutBytes
		}
	}
	return sum
}

// clusterPipeline is what the cluster's pipeline phase measured, per side.
type clusterPipeline struct {
	side                string
	replicas            int
	ack                 latencies // one acknowledged publish at a time
	publishRate         float64   // synthetic events/s, 2,000 in flight
	streamEvents        uint64
	billing, aggregator drainResult
	gatewayEvents       uint64 // published by the side's gateways during the HTTP runs
	streamBytes         uint64
}

// clusterPipelinePhase measures, on each side's stream, the acknowledged
// publish one at a time, the publish rate with many in flight, and the
// billing worker and the aggregator reading it from the cluster.
func (h *harness) clusterPipelinePhase(ctx context.Context, res *results) error {
	for _, side := range h.cl.sides() {
		cp := clusterPipeline{side: side.name, replicas: side.replicas}
		nc, err := nats.Connect(side.natsURL, nats.Name("bench-"+side.name), nats.Timeout(5*time.Second))
		if err != nil {
			return fmt.Errorf("nats (cluster, %s): %w", side.name, err)
		}
		js, err := jetstream.New(nc, jetstream.WithPublishAsyncMaxPending(4096))
		if err != nil {
			nc.Close()
			return err
		}
		err = func() error {
			defer nc.Close()
			if cp.ack, err = ackLatencyReplicas(ctx, side.natsURL, side.replicas); err != nil {
				return err
			}
			stream, err := js.Stream(ctx, usagev1.StreamName)
			if err != nil {
				return fmt.Errorf("usage stream: %w", err)
			}
			info, err := stream.Info(ctx)
			if err != nil {
				return err
			}
			cp.gatewayEvents = info.State.Msgs
			// Both workers' durable consumers exist and are caught up
			// before the fill (creating an R3 consumer takes a moment of
			// its own), so each drain below is only its reading and writing.
			for _, w := range []struct{ bin, durable string }{{"billing-worker", usagev1.BillingConsumer}, {"aggregator", usagev1.AggregatorConsumer}} {
				stop, err := h.workerCaughtUp(ctx, w.bin+"-first-"+side.name, w.bin, w.durable, side.natsURL)
				if err != nil {
					return err
				}
				stop()
			}
			want := info.State.Msgs + uint64(h.cfg.Cluster.PipelineEvents)
			if cp.publishRate, err = fillStream(ctx, js, stream, want); err != nil {
				return err
			}
			if info, err = stream.Info(ctx); err != nil {
				return err
			}
			cp.streamEvents, cp.streamBytes = info.State.Msgs, info.State.Bytes
			if cp.billing, err = h.drainWithURL(ctx, js, "billing-worker", usagev1.BillingConsumer, side.natsURL); err != nil {
				return err
			}
			if cp.aggregator, err = h.drainWithURL(ctx, js, "aggregator", usagev1.AggregatorConsumer, side.natsURL); err != nil {
				return err
			}
			return nil
		}()
		if err != nil {
			return fmt.Errorf("cluster pipeline (%s): %w", side.name, err)
		}
		h.logger.Info("cluster pipeline", "side", side.name, "ack_p50", cp.ack.p50.String(), "publish_rate", int(cp.publishRate),
			"billing_per_s", int(cp.billing.rate()), "aggregator_per_s", int(cp.aggregator.rate()))
		res.cluster = append(res.cluster, cp)
	}
	return nil
}
