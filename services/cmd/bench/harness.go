package main

import (
	"bytes"
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	_ "github.com/lib/pq" // Postgres driver
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	usagev1 "github.com/mana/apigw/proto/usage/v1"
	"github.com/mana/apigw/services/authdev"
	"github.com/mana/apigw/services/testenv/proc"
)

// benchTier is the tier the benchmark's key uses, added to the shipped
// price list: a rate and a grant no run can exhaust, so every request takes
// the full path (key, rate limit and credit hold in Redis, durable event)
// and none is refused.
const benchTier = `  bench: {rateLimitPerMinute: 1000000000, monthlyCredits: 1000000000000, endpoints: ["*"]}` + "\n"

// withBenchTier adds benchTier to a pricing file's tiers.
func withBenchTier(base []byte) ([]byte, error) {
	out := strings.Replace(string(base), "\ntiers:\n", "\ntiers:\n"+benchTier, 1)
	if out == string(base) {
		return nil, fmt.Errorf("pricing file has no top-level tiers: block")
	}
	return []byte(out), nil
}

// searchBody is the request every target gets: the seed's own search.
const searchBody = `{"query":"quantum computing"}`

// harness owns the processes of one benchmark run.
type harness struct {
	cfg     config
	logger  *slog.Logger
	dsn     string // the bench database
	procs   []*proc.Proc
	closers []func()

	searchURL, gatewayURL, bareURL, nginxURL string
	search, gateway, bare, nginx             *proc.Proc
	keys                                     []string // enterprise keys of the full path
	fewKeys, manyKeys                        []string // bench-tier keys of the per-key cost comparison
	js                                       jetstream.JetStream
	noFsyncURL                               string // the diagnostic gateway, if any
	noFsync                                  *proc.Proc
	cl                                       *clusterStack // CLUSTER=1: the scaled-out stack
}

func runHarness(ctx context.Context, cfg config, logger *slog.Logger) error {
	start := time.Now()
	if err := os.MkdirAll(cfg.WorkDir, 0o755); err != nil {
		return err
	}
	h := &harness{cfg: cfg, logger: logger}
	defer h.stopAll()
	if err := h.setup(ctx); err != nil {
		return err
	}
	res := &results{cfg: cfg, started: start, loadavg: loadAvg()}
	res.targets = h.targets()
	if err := h.httpPhase(ctx, res); err != nil {
		return err
	}
	if err := h.keysPhase(ctx, res); err != nil {
		return err
	}
	if cfg.NATSDir != "" {
		var err error
		if res.fsync, err = fsyncLatency(cfg.NATSDir, 500); err != nil {
			return err
		}
	}
	if err := h.pipelinePhase(ctx, res); err != nil {
		return err
	}
	if h.cl != nil {
		if err := h.clusterPipelinePhase(ctx, res); err != nil {
			return err
		}
	}
	res.machine = machineInfo(ctx, cfg, h.dsn)
	res.goBench = readOptional(cfg.GoBench)
	res.pprofTop = readOptional(cfg.Profile0)
	res.elapsed = time.Since(start)
	var buf bytes.Buffer
	writeReport(&buf, res)
	if err := os.MkdirAll(filepath.Dir(cfg.Out), 0o755); err != nil {
		return err
	}
	if err := os.WriteFile(cfg.Out, buf.Bytes(), 0o644); err != nil {
		return fmt.Errorf("write report: %w", err)
	}
	logger.Info("report written", "path", cfg.Out, "elapsed", res.elapsed.Round(time.Second).String())
	for _, c := range res.checks() {
		logger.Info("target", "what", c.what, "measured", c.measured, "target", c.want, "verdict", c.verdict())
	}
	return nil
}

func loadAvg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "unknown"
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "unknown"
	}
	return strings.Join(f[:3], " ")
}

func readOptional(path string) string {
	if path == "" {
		return ""
	}
	b, _ := os.ReadFile(path)
	return string(b)
}

func (h *harness) stopAll() {
	for i := len(h.procs) - 1; i >= 0; i-- {
		_ = h.procs[i].Stop(20 * time.Second)
	}
	for i := len(h.closers) - 1; i >= 0; i-- {
		h.closers[i]()
	}
}

func (h *harness) start(name, bin string, env []string, args ...string) (*proc.Proc, error) {
	p, err := startProc(name, h.cfg.WorkDir, bin, env, args...)
	if err != nil {
		return nil, err
	}
	h.procs = append(h.procs, p)
	return p, nil
}

func (h *harness) bin(name string) string { return filepath.Join(h.cfg.BinDir, name) }

// restart stops *pp and starts it again the same way, waiting for readyURL.
func (h *harness) restart(ctx context.Context, pp **proc.Proc, readyURL string) error {
	old := *pp
	_ = old.Stop(30 * time.Second)
	p, err := proc.Start(old.Spec)
	if err != nil {
		return err
	}
	for i := range h.procs {
		if h.procs[i] == old {
			h.procs[i] = p
		}
	}
	*pp = p
	return p.WaitReady(ctx, readyURL, 60*time.Second, nil)
}

// freshProxies restarts the Go proxies (bare proxy and gateways), so that
// the fixed-rate phase measures their memory at that rate, not what the
// closed-loop runs left in their heaps; then warms each up at the rate.
func (h *harness) freshProxies(ctx context.Context, res *results, rate int) error {
	if err := h.restart(ctx, &h.bare, h.bareURL+"/health"); err != nil {
		return err
	}
	if err := h.restart(ctx, &h.gateway, h.gatewayURL+"/ready"); err != nil {
		return err
	}
	if h.noFsync != nil {
		if err := h.restart(ctx, &h.noFsync, h.noFsyncURL+"/ready"); err != nil {
			return err
		}
	}
	if h.cl != nil {
		for _, side := range h.cl.sides() {
			for i := range side.gateways {
				if err := h.restart(ctx, &side.gateways[i], side.gatewayURLs[i]+"/ready"); err != nil {
					return err
				}
			}
		}
	}
	for _, t := range res.targets {
		if s := attack(ctx, t, attackOpts{duration: h.cfg.Warmup, rate: rate, workers: h.cfg.OpenWorkers}); s.errors > 0 {
			return fmt.Errorf("warm-up of %s after restart: %d errors (first: %s)", t.name, s.errors, s.firstErr)
		}
	}
	return nil
}

// billingCaughtUp starts a billing worker on the stream of natsURL and
// returns once it has applied every event on it; stop ends it.
func (h *harness) billingCaughtUp(ctx context.Context, name, natsURL string) (stop func(), err error) {
	return h.workerCaughtUp(ctx, name, "billing-worker", usagev1.BillingConsumer, natsURL)
}

// workerCaughtUp starts a worker binary on the stream of natsURL and
// returns once its durable consumer has nothing pending or unacknowledged.
func (h *harness) workerCaughtUp(ctx context.Context, name, bin, durable, natsURL string) (stop func(), err error) {
	port, err := proc.FreePort()
	if err != nil {
		return nil, err
	}
	env := []string{"DATABASE_URL=" + h.dsn, "NATS_URL=" + natsURL, "METRICS_PORT=" + strconv.Itoa(port), "LOG_LEVEL=warn"}
	p, err := startProc(name, h.cfg.WorkDir, h.bin(bin), env)
	if err != nil {
		return nil, err
	}
	stop = func() { _ = p.Stop(30 * time.Second) }
	nc, err := nats.Connect(natsURL, nats.Name("bench"), nats.Timeout(5*time.Second))
	if err != nil {
		stop()
		return nil, fmt.Errorf("nats: %w", err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		stop()
		return nil, err
	}
	t0 := time.Now()
	deadline := t0.Add(10 * time.Minute)
	for {
		if exited(p) {
			stop()
			return nil, fmt.Errorf("%s exited:\n%s", name, p.Tail(proc.TailSize))
		}
		if time.Now().After(deadline) {
			stop()
			return nil, fmt.Errorf("%s did not catch up in 10 minutes", name)
		}
		if c, err := js.Consumer(ctx, usagev1.StreamName, durable); err == nil {
			if info, err := c.Info(ctx); err == nil && info.NumPending+uint64(info.NumAckPending) == 0 {
				h.logger.Info("worker caught up", "worker", name, "seconds", time.Since(t0).Seconds())
				return stop, nil
			}
		}
		select {
		case <-ctx.Done():
			stop()
			return nil, ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// setup creates the database and starts the stand-in, the dev issuer (in
// process), the gateway, the bare proxy and nginx, then creates the API key
// through the management API.
func (h *harness) setup(ctx context.Context) error {
	var err error
	if h.dsn, err = freshDatabase(ctx, h.cfg.DatabaseURL, "bench"); err != nil {
		return err
	}
	authURL, err := h.startAuth()
	if err != nil {
		return err
	}
	ports := make([]int, 4)
	for i := range ports {
		if ports[i], err = proc.FreePort(); err != nil {
			return err
		}
	}
	h.searchURL = fmt.Sprintf("http://127.0.0.1:%d", ports[0])
	h.gatewayURL = fmt.Sprintf("http://127.0.0.1:%d", ports[1])
	h.bareURL = fmt.Sprintf("http://127.0.0.1:%d", ports[2])
	h.nginxURL = fmt.Sprintf("http://127.0.0.1:%d", ports[3])

	if h.search, err = h.start("search", h.bin("search"), []string{"PORT=" + strconv.Itoa(ports[0]), "LOG_LEVEL=warn"}); err != nil {
		return err
	}
	if err := h.search.WaitReady(ctx, h.searchURL+"/health", 30*time.Second, nil); err != nil {
		return err
	}

	pricing := filepath.Join(h.cfg.WorkDir, "pricing.yaml")
	base, err := os.ReadFile(h.cfg.PricingFile)
	if err != nil {
		return fmt.Errorf("read the gateway's price list: %w", err)
	}
	priced, err := withBenchTier(base)
	if err != nil {
		return err
	}
	if err := os.WriteFile(pricing, priced, 0o600); err != nil {
		return err
	}
	rhost, rport, err := net.SplitHostPort(h.cfg.RedisAddr)
	if err != nil {
		return fmt.Errorf("BENCH_REDIS_ADDR: %w", err)
	}
	spool := filepath.Join(h.cfg.WorkDir, "spool")
	gwEnv := []string{
		"PORT=" + strconv.Itoa(ports[1]), "DATABASE_URL=" + h.dsn, "REDIS_HOST=" + rhost, "REDIS_PORT=" + rport,
		"NATS_URL=" + h.cfg.NATSURL, "SEARCH_SERVICE_URL=" + h.searchURL,
		// Not benchmarked; nothing listens there.
		"STT_SERVICE_URL=http://127.0.0.1:9", "TTS_SERVICE_URL=http://127.0.0.1:9",
		"MANA_CORE_AUTH_URL=" + authURL, "API_KEY_PEPPER=bench-pepper-0123456789abcdef",
		"PRICING_FILE=" + pricing, "SPOOL_DIR=" + spool, "GATEWAY_ID=bench", "LOG_LEVEL=warn",
		// Every load generator's connection comes from 127.0.0.1, as from
		// a load balancer: the per-address connection cap is for clients.
		"CONNECTIONS_PER_ADDRESS=0",
	}
	if h.gateway, err = h.start("gateway", h.bin("gateway"), gwEnv); err != nil {
		return err
	}
	if err := h.gateway.WaitReady(ctx, h.gatewayURL+"/ready", 60*time.Second, nil); err != nil {
		return err
	}
	if h.cfg.NATSNoFsyncURL != "" {
		// Same database, Redis and key; only its JetStream differs.
		port, err := proc.FreePort()
		if err != nil {
			return err
		}
		h.noFsyncURL = fmt.Sprintf("http://127.0.0.1:%d", port)
		env := append(append([]string{}, gwEnv...), "PORT="+strconv.Itoa(port), "NATS_URL="+h.cfg.NATSNoFsyncURL,
			"SPOOL_DIR="+spool+"-nofsync", "GATEWAY_ID=bench-nofsync")
		if h.noFsync, err = h.start("gateway-nofsync", h.bin("gateway"), env); err != nil {
			return err
		}
		if err := h.noFsync.WaitReady(ctx, h.noFsyncURL+"/ready", 60*time.Second, nil); err != nil {
			return err
		}
	}
	if h.cfg.Cluster.enabled() {
		if err := h.setupCluster(ctx, gwEnv); err != nil {
			return err
		}
	}

	self, err := os.Executable()
	if err != nil {
		return err
	}
	if h.bare, err = h.start("bare-proxy", self, []string{"PORT=" + strconv.Itoa(ports[2]), "TARGET_URL=" + h.searchURL}, "proxy"); err != nil {
		return err
	}
	if err := h.bare.WaitReady(ctx, h.bareURL+"/health", 30*time.Second, nil); err != nil {
		return err
	}

	// nginx as a keep-alive reverse proxy in front of the stand-in.
	if h.nginx, err = h.startNginx("nginx", nginxConfig{
		Prefix: filepath.Join(h.cfg.WorkDir, "nginx"), Workers: "auto", Keepalive: 128,
		Sites: []nginxSite{{Upstream: "standin", Listen: ports[3], Servers: []int{ports[0]}}},
	}); err != nil {
		return err
	}
	if err := h.nginx.WaitReady(ctx, h.nginxURL+"/health", 30*time.Second, nil); err != nil {
		return err
	}
	nc, err := nats.Connect(h.cfg.NATSURL, nats.Name("bench-stream-count"), nats.Timeout(5*time.Second))
	if err != nil {
		return fmt.Errorf("nats: %w", err)
	}
	h.closers = append(h.closers, nc.Close)
	if h.js, err = jetstream.New(nc); err != nil {
		return fmt.Errorf("jetstream: %w", err)
	}
	token, err := login(ctx, authURL)
	if err != nil {
		return err
	}
	t0 := time.Now()
	if h.keys, err = h.createKeys(ctx, token, "enterprise", h.cfg.Keys); err != nil {
		return err
	}
	if h.fewKeys, err = h.createKeys(ctx, token, "bench", h.cfg.FewKeys); err != nil {
		return err
	}
	if h.manyKeys, err = h.createKeys(ctx, token, "bench", h.cfg.ManyKeys); err != nil {
		return err
	}
	h.logger.Info("keys created through the management API", "enterprise", len(h.keys), "few", len(h.fewKeys),
		"many", len(h.manyKeys), "seconds", time.Since(t0).Seconds())
	return nil
}

// streamState reads the messages and bytes of the USAGE stream of js
// (zero if unknown).
func (h *harness) streamState(js jetstream.JetStream) func() streamCounts {
	return func() streamCounts {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		s, err := js.Stream(ctx, usagev1.StreamName)
		if err != nil {
			h.logger.Warn("usage stream info", "err", err)
			return streamCounts{}
		}
		st := s.CachedInfo().State
		return streamCounts{msgs: st.Msgs, bytes: st.Bytes}
	}
}

// freshDatabase (re)creates database name on the cluster of adminURL and
// returns its URL.
func freshDatabase(ctx context.Context, adminURL, name string) (string, error) {
	db, err := sql.Open("postgres", adminURL)
	if err != nil {
		return "", fmt.Errorf("open postgres: %w", err)
	}
	defer db.Close()
	cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if _, err := db.ExecContext(cctx, "DROP DATABASE IF EXISTS "+name+" WITH (FORCE)"); err != nil {
		return "", fmt.Errorf("drop database %s: %w", name, err)
	}
	if _, err := db.ExecContext(cctx, "CREATE DATABASE "+name); err != nil {
		return "", fmt.Errorf("create database %s: %w", name, err)
	}
	u, err := url.Parse(adminURL)
	if err != nil {
		return "", err
	}
	u.Path = "/" + name
	return u.String(), nil
}

// startAuth serves the dev issuer in this process.
func (h *harness) startAuth() (string, error) {
	ah, err := authdev.New(authdev.Config{}, h.logger.With("component", "authdev"))
	if err != nil {
		return "", err
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	srv := &http.Server{Handler: ah, ReadHeaderTimeout: 5 * time.Second, ReadTimeout: 10 * time.Second,
		WriteTimeout: 10 * time.Second, IdleTimeout: time.Minute}
	go func() { _ = srv.Serve(l) }()
	h.closers = append(h.closers, func() { _ = srv.Close() })
	return "http://" + l.Addr().String(), nil
}

// login signs in as the dev user at the dev issuer.
func login(ctx context.Context, authURL string) (string, error) {
	var login struct {
		AccessToken string `json:"accessToken"`
	}
	if err := postJSON(ctx, authURL+"/api/v1/auth/login", "", `{"email":"user@example.com","password":"password"}`, http.StatusOK, &login); err != nil {
		return "", fmt.Errorf("login: %w", err)
	}
	return login.AccessToken, nil
}

// createKeys creates n keys of a tier through the management API, 16 at a time.
func (h *harness) createKeys(ctx context.Context, token, tier string, n int) ([]string, error) {
	out := make([]string, n)
	errs := make(chan error, n)
	next := make(chan int)
	var wg sync.WaitGroup
	for range min(16, n) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				var key struct {
					Key string `json:"key"`
				}
				body := fmt.Sprintf(`{"name":"bench %s %d","tier":%q}`, tier, i, tier)
				if err := postJSON(ctx, h.gatewayURL+"/api-keys", token, body, http.StatusCreated, &key); err != nil {
					errs <- fmt.Errorf("create key: %w", err)
					continue
				}
				if key.Key == "" {
					errs <- errors.New("create key: no key in the answer")
					continue
				}
				out[i] = key.Key
			}
		}()
	}
	for i := range n {
		next <- i
	}
	close(next)
	wg.Wait()
	close(errs)
	if err := <-errs; err != nil {
		return nil, err
	}
	return out, nil
}

func postJSON(ctx context.Context, u, bearer, body string, want int, out any) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, u, strings.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	if bearer != "" {
		req.Header.Set("Authorization", "Bearer "+bearer)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return err
	}
	if resp.StatusCode != want {
		return fmt.Errorf("POST %s: status %d: %s", u, resp.StatusCode, b)
	}
	return json.Unmarshal(b, out)
}

// targets are the four things measured, in the report's order.
func (h *harness) targets() []*target {
	hdr := http.Header{"Content-Type": []string{"application/json"}}
	gwHdr := hdr.Clone()
	// Through the harness's fields: a restarted process has a new pid.
	one := func(p **proc.Proc) func() []int { return func() []int { return []int{(*p).Pid()} } }
	extra := map[string][]int{}
	if h.cfg.RedisPID > 0 {
		extra["redis"] = []int{h.cfg.RedisPID}
	}
	if h.cfg.NATSPID > 0 {
		extra["nats"] = []int{h.cfg.NATSPID}
	}
	body := []byte(searchBody)
	ts := []*target{
		{name: "direct", label: "direct (search stand-in)", url: h.searchURL + "/search", header: hdr, body: body, pids: one(&h.search)},
		{name: "nginx", label: "nginx keep-alive proxy", url: h.nginxURL + "/search", header: hdr, body: body,
			pids: func() []int { return append([]int{h.nginx.Pid()}, children(h.nginx.Pid())...) }},
		{name: "bare-go", label: "bare Go proxy (features off)", url: h.bareURL + "/search", header: hdr, body: body, pids: one(&h.bare)},
		{name: "gateway", label: fmt.Sprintf("gateway, full path (%d enterprise keys)", len(h.keys)), url: h.gatewayURL + "/v1/search",
			header: gwHdr, body: body, keys: h.keys, pids: one(&h.gateway), extra: extra, stream: h.streamState(h.js)},
	}
	if h.noFsync != nil {
		extra := map[string][]int{}
		if h.cfg.RedisPID > 0 {
			extra["redis"] = []int{h.cfg.RedisPID}
		}
		if h.cfg.NATSNoFsyncPID > 0 {
			extra["nats"] = []int{h.cfg.NATSNoFsyncPID}
		}
		ts = append(ts, &target{name: "gateway-nofsync", label: "gateway, full path, JetStream without per-write fsync (diagnostic)",
			url: h.noFsyncURL + "/v1/search", header: gwHdr, body: body, keys: h.keys, pids: one(&h.noFsync), extra: extra})
	}
	if h.cl != nil {
		for _, side := range h.cl.sides() {
			ts = append(ts, h.clusterTarget(side, h.keys))
		}
	}
	return ts
}

// keyTargets are the gateway's full path with few and with many keys in use,
// for the per-key cost comparison.
func (h *harness) keyTargets() []*target {
	hdr := http.Header{"Content-Type": []string{"application/json"}}
	mk := func(name string, keys []string) *target {
		return &target{name: name, label: fmt.Sprintf("gateway, %d keys in use", len(keys)), url: h.gatewayURL + "/v1/search",
			header: hdr, body: []byte(searchBody), keys: keys, pids: func() []int { return []int{h.gateway.Pid()} }, stream: h.streamState(h.js)}
	}
	ts := []*target{mk("keys-few", h.fewKeys), mk("keys-many", h.manyKeys)}
	if h.cl != nil {
		// The many keys through the scaled-out stack too: their state is
		// spread over the Redis Cluster's slots.
		t := h.clusterTarget(h.cl.r3, h.manyKeys)
		t.name, t.label = "keys-many-cluster", fmt.Sprintf("cluster R3 (nginx, 2 gateways), %d keys in use", len(h.manyKeys))
		ts = append(ts, t)
	}
	return ts
}

// keysPhase measures closed-loop throughput with few and with many keys in
// use, alternating them over the rounds after a warm-up of each (which also
// loads every key's state into the gateway and Redis).
func (h *harness) keysPhase(ctx context.Context, res *results) error {
	res.keyTargets = h.keyTargets()
	res.keys = map[string][]sample{}
	res.firstCalls = map[string]float64{}
	for _, t := range res.keyTargets {
		// Every key once, so that no measured round pays for a key's first
		// call (its state is built from the ledger then); how fast first
		// calls go is reported on its own.
		rate, err := firstCalls(ctx, t, h.cfg.Connections)
		if err != nil {
			return fmt.Errorf("warm-up of %s: %w", t.name, err)
		}
		res.firstCalls[t.name] = rate
		s := attack(ctx, t, attackOpts{duration: h.cfg.Warmup, workers: h.cfg.Connections})
		if s.requests == 0 || s.errors > 0 {
			return fmt.Errorf("warm-up of %s: %d requests, %d errors (first: %s)", t.name, s.requests, s.errors, s.firstErr)
		}
	}
	for r := 0; r < h.cfg.Rounds; r++ {
		for _, t := range rotate(res.keyTargets, r) {
			if err := ctx.Err(); err != nil {
				return err
			}
			s := attack(ctx, t, attackOpts{duration: h.cfg.MaxDuration, workers: h.cfg.Connections})
			h.logger.Info("keys in use", "round", r+1, "target", t.name, "rps", math.Round(s.rate), "errors", s.errors,
				"gateway_cpu_us_per_req", math.Round(s.cpu/float64(max(s.requests-s.errors, 1))*1e6))
			res.keys[t.name] = append(res.keys[t.name], s)
		}
	}
	return nil
}

// firstCalls sends one request with each of t's keys, `workers` at a time,
// and returns how many of these first calls were served per second.
func firstCalls(ctx context.Context, t *target, workers int) (float64, error) {
	var next atomic.Int64
	errs := make(chan error, workers)
	start := time.Now()
	var wg sync.WaitGroup
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := next.Add(1) - 1; i < int64(len(t.keys)); i = next.Add(1) - 1 {
				if err := callOnce(ctx, t, t.keys[i]); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	if err := <-errs; err != nil {
		return 0, err
	}
	return float64(len(t.keys)) / time.Since(start).Seconds(), nil
}

// callOnce sends t's request once with key and wants a 200.
func callOnce(ctx context.Context, t *target, key string) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, t.url, bytes.NewReader(t.body))
	if err != nil {
		return err
	}
	req.Header = t.header.Clone()
	req.Header.Set("X-API-Key", key)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("POST %s: status %d: %s", t.url, resp.StatusCode, b)
	}
	return nil
}

// rotate returns ts starting at index r (mod len), so that every target
// takes every position across rounds.
func rotate[T any](ts []T, r int) []T {
	n := len(ts)
	out := make([]T, 0, n)
	for i := 0; i < n; i++ {
		out = append(out, ts[(i+r)%n])
	}
	return out
}

// httpPhase: warm-up, closed-loop max throughput, then open-loop latency at
// fixed rates, each alternating the targets over several rounds.
func (h *harness) httpPhase(ctx context.Context, res *results) error {
	cfg := h.cfg
	busy0, ours0 := machineBusy(), h.ourCPU()
	defer func() {
		res.busyCPU, res.ourCPU = machineBusy()-busy0, h.ourCPU()-ours0
	}()
	for _, t := range res.targets {
		s := attack(ctx, t, attackOpts{duration: cfg.Warmup, workers: cfg.Connections})
		if s.requests == 0 || s.errors > 0 {
			return fmt.Errorf("warm-up of %s: %d requests, %d errors (first: %s)", t.name, s.requests, s.errors, s.firstErr)
		}
	}
	res.max = map[string][]sample{}
	for r := 0; r < cfg.Rounds; r++ {
		for _, t := range rotate(res.targets, r) {
			if err := ctx.Err(); err != nil {
				return err
			}
			s := attack(ctx, t, attackOpts{duration: cfg.MaxDuration, workers: cfg.Connections})
			h.logger.Info("max throughput", "round", r+1, "target", t.name, "rps", math.Round(s.rate), "errors", s.errors)
			res.max[t.name] = append(res.max[t.name], s)
		}
	}
	directMax := median(rates(res.max["direct"]))
	var rateList []rateRun
	for _, f := range cfg.RateFractions {
		rate := int(math.Round(directMax*f/50) * 50)
		rateList = append(rateList, rateRun{label: fmt.Sprintf("%.0f %% of direct's max", f*100), rate: max(rate, 50)})
	}
	rateList = append(rateList, rateRun{label: "fixed", rate: cfg.FixedRate, fixed: true})
	res.peakAll, res.peakFixed = map[string]int64{}, map[string]int64{}
	for i := range rateList {
		rr := &rateList[i]
		rr.samples = map[string][]sample{}
		if rr.fixed {
			// The peak RSS of the run so far; then fresh Go proxies and
			// reset peaks, so the fixed-rate peak is that phase's own.
			for _, t := range res.targets {
				res.peakAll[t.name] = groupHWM(t.pids())
			}
			// As in a deployment, the billing worker applies the events
			// meanwhile: the gateway keeps only what it has not applied
			// yet (the closed-loop runs measure the gateway without it).
			streams := map[string]string{"billing-worker-live": h.cfg.NATSURL}
			if h.cl != nil {
				for _, side := range h.cl.sides() {
					streams["billing-worker-live-"+side.name] = side.natsURL
				}
			}
			for name, u := range streams {
				stopBilling, err := h.billingCaughtUp(ctx, name, u)
				if err != nil {
					return err
				}
				defer stopBilling()
			}
			if err := h.freshProxies(ctx, res, rr.rate); err != nil {
				return err
			}
			for _, t := range res.targets {
				if err := resetHWM(t.pids()); err != nil {
					h.logger.Warn("peak RSS not reset; the fixed-rate peak is the run's", "target", t.name, "err", err)
				}
			}
		}
		for r := 0; r < cfg.Rounds; r++ {
			for _, t := range rotate(res.targets, r) {
				if err := ctx.Err(); err != nil {
					return err
				}
				if !rr.fixed && float64(rr.rate) > res.maxRate(t.name) {
					// Beyond what the target served closed-loop: its
					// latencies would be queueing alone, and the overload
					// would spill into the next run.
					continue
				}
				s := attack(ctx, t, attackOpts{duration: cfg.RateDuration, rate: rr.rate, workers: cfg.OpenWorkers})
				h.logger.Info("fixed rate", "round", r+1, "target", t.name, "rate", rr.rate, "achieved", math.Round(s.rate),
					"p50", s.lat.p50.String(), "p99", s.lat.p99.String(), "errors", s.errors)
				rr.samples[t.name] = append(rr.samples[t.name], s)
			}
		}
		if rr.fixed {
			for _, t := range res.targets {
				res.peakFixed[t.name] = groupHWM(t.pids())
			}
		}
	}
	res.rates = rateList
	return nil
}

// ourCPU is the CPU seconds used so far by this process, its children and
// the servers (Redis, NATS); what else the machine did is interference.
func (h *harness) ourCPU() float64 {
	pids := []int{os.Getpid()}
	for _, p := range h.procs {
		if !exited(p) {
			pids = append(pids, p.Pid())
		}
	}
	if h.nginx != nil {
		pids = append(pids, children(h.nginx.Pid())...)
	}
	for _, p := range []int{h.cfg.RedisPID, h.cfg.NATSPID, h.cfg.NATSNoFsyncPID} {
		if p > 0 {
			pids = append(pids, p)
		}
	}
	if h.cl != nil {
		pids = append(append(pids, h.cfg.Cluster.NATSPIDs...), h.cfg.Cluster.RedisPIDs...)
		pids = append(pids, children(h.cl.lb.Pid())...)
	}
	return groupCPU(pids)
}

func rates(ss []sample) []float64 {
	out := make([]float64, len(ss))
	for i, s := range ss {
		out[i] = s.rate
	}
	return out
}
