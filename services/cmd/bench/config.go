package main

import (
	"errors"
	"fmt"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"
)

// config is the harness's settings. .ci/bench.sh sets the server addresses
// and paths; the profile (BENCH_PROFILE=full or smoke) sets the durations and
// sizes, each of which BENCH_<NAME> overrides.
type config struct {
	Profile     string
	DatabaseURL string // an admin URL of the bench cluster; the harness creates its own database
	RedisAddr   string
	NATSURL     string
	RedisPID    int // for CPU accounting of the full path (0: not reported)
	NATSPID     int
	// A second NATS whose JetStream does not fsync every write; when set, a
	// second gateway runs against it as a diagnostic target.
	NATSNoFsyncURL string
	NATSNoFsyncPID int
	BinDir         string // gateway, search, billing-worker, aggregator, bench
	WorkDir        string // logs, nginx prefix, spool; emptied by the caller
	Out            string // the report
	Nginx          string // the nginx binary
	PricingFile    string // the gateway's shipped price list, which the bench tier is added to
	NATSServer     string // the nats-server binary (for its version)
	GoBench        string // output of the handler-chain go test -bench run (optional)
	Profile0       string // `go tool pprof -top` of that run (optional)

	Rounds         int           // A/B alternations; medians are taken over them
	MaxDuration    time.Duration // one closed-loop run
	RateDuration   time.Duration // one open-loop run
	Warmup         time.Duration // per target, before the first round
	Connections    int           // closed-loop workers = connections
	OpenWorkers    int           // open-loop cap on concurrent requests
	FixedRate      int           // the absolute open-loop rate (req/s)
	RateFractions  []float64     // open-loop rates as fractions of direct's max
	PipelineEvents int           // events on the stream for the pipeline rates
	ReplayEvents   int           // events on the stream for the replay timing
	// Keys is how many enterprise keys the full path spreads its load over
	// (round robin), as a real deployment's many clients do.
	Keys int
	// FewKeys and ManyKeys are the key counts of the per-key cost
	// comparison (closed loop, the bench tier so no rate limit interferes).
	FewKeys, ManyKeys int
	// NATSDir is the NATS server's data folder: the disk's own fsync
	// latency is measured there (optional).
	NATSDir string
	// Cluster is the scaled-out stack's servers (CLUSTER=1), zero when
	// only the single-node targets run.
	Cluster clusterConfig
}

// clusterConfig is the servers .ci/bench.sh starts with CLUSTER=1: a
// JetStream cluster of three nats-servers with two accounts (their client
// URL lists carry each account's credentials) and a Redis Cluster.
type clusterConfig struct {
	NATSURL, R1NATSURL string   // account R3 (USAGE at three replicas), account R1 (at one)
	NATSPIDs           []int    // every nats-server of the cluster
	NATSMonitors       []string // their monitoring URLs (route bytes)
	RedisAddrs         string   // REDIS_ADDRS for the gateways
	RedisPIDs          []int    // every master
	PipelineEvents     int      // events on the R3 stream for the cluster's pipeline rates
}

func (c clusterConfig) enabled() bool { return c.NATSURL != "" }

type profile struct {
	rounds                         int
	maxDur, rateDur, warmup        time.Duration
	pipelineEvents, replayEvents   int
	connections, openWorkers, rate int
	keys, fewKeys, manyKeys        int
	clusterEvents                  int
}

var profiles = map[string]profile{
	"full": {rounds: 3, maxDur: 3 * time.Second, rateDur: 3 * time.Second, warmup: time.Second,
		pipelineEvents: 300_000, replayEvents: 1_000_000, connections: 64, openWorkers: 512, rate: 2000,
		keys: 1000, fewKeys: 100, manyKeys: 10_000, clusterEvents: 100_000},
	"smoke": {rounds: 1, maxDur: 300 * time.Millisecond, rateDur: 300 * time.Millisecond, warmup: 100 * time.Millisecond,
		pipelineEvents: 2000, replayEvents: 3000, connections: 16, openWorkers: 64, rate: 200,
		keys: 20, fewKeys: 5, manyKeys: 50, clusterEvents: 2000},
}

// configFromEnv reads the settings, reporting every problem at once.
func configFromEnv(getenv func(string) string) (config, error) {
	var errs []error
	get := func(k, def string) string {
		if v := getenv(k); v != "" {
			return v
		}
		return def
	}
	name := get("BENCH_PROFILE", "full")
	p, ok := profiles[name]
	if !ok {
		errs = append(errs, fmt.Errorf("BENCH_PROFILE=%q: want full or smoke", name))
		p = profiles["smoke"]
	}
	intv := func(k string, def int) int {
		v := getenv(k)
		if v == "" {
			return def
		}
		n, err := strconv.Atoi(v)
		if err != nil || n < 0 {
			errs = append(errs, fmt.Errorf("%s=%q: want a non-negative integer", k, v))
		}
		return n
	}
	dur := func(k string, def time.Duration) time.Duration {
		v := getenv(k)
		if v == "" {
			return def
		}
		d, err := time.ParseDuration(v)
		if err != nil || d <= 0 {
			errs = append(errs, fmt.Errorf("%s=%q: want a positive duration like 3s", k, v))
		}
		return d
	}
	pids := func(k string) []int {
		var out []int
		for _, f := range strings.Split(getenv(k), ",") {
			if f = strings.TrimSpace(f); f == "" {
				continue
			}
			n, err := strconv.Atoi(f)
			if err != nil || n < 1 {
				errs = append(errs, fmt.Errorf("%s: %q is not a process ID", k, f))
				continue
			}
			out = append(out, n)
		}
		return out
	}
	c := config{
		Profile:        name,
		DatabaseURL:    getenv("BENCH_DATABASE_URL"),
		RedisAddr:      getenv("BENCH_REDIS_ADDR"),
		NATSURL:        getenv("BENCH_NATS_URL"),
		RedisPID:       intv("BENCH_REDIS_PID", 0),
		NATSPID:        intv("BENCH_NATS_PID", 0),
		NATSNoFsyncURL: getenv("BENCH_NATS_NOFSYNC_URL"),
		NATSNoFsyncPID: intv("BENCH_NATS_NOFSYNC_PID", 0),
		BinDir:         getenv("BENCH_BIN_DIR"),
		WorkDir:        getenv("BENCH_WORK_DIR"),
		Out:            getenv("BENCH_OUT"),
		Nginx:          get("BENCH_NGINX", "nginx"),
		PricingFile:    get("BENCH_PRICING_FILE", "gateway/internal/pricing/pricing.yaml"),
		NATSServer:     get("BENCH_NATS_SERVER", "nats-server"),
		GoBench:        getenv("BENCH_GO_BENCH"),
		Profile0:       getenv("BENCH_PPROF_TOP"),
		Rounds:         intv("BENCH_ROUNDS", p.rounds),
		MaxDuration:    dur("BENCH_MAX_DURATION", p.maxDur),
		RateDuration:   dur("BENCH_RATE_DURATION", p.rateDur),
		Warmup:         dur("BENCH_WARMUP", p.warmup),
		Connections:    intv("BENCH_CONNECTIONS", p.connections),
		OpenWorkers:    intv("BENCH_OPEN_WORKERS", p.openWorkers),
		FixedRate:      intv("BENCH_FIXED_RATE", p.rate),
		RateFractions:  []float64{0.25, 0.50, 0.75},
		PipelineEvents: intv("BENCH_PIPELINE_EVENTS", p.pipelineEvents),
		ReplayEvents:   intv("BENCH_REPLAY_EVENTS", p.replayEvents),
		Keys:           intv("BENCH_KEYS", p.keys),
		FewKeys:        intv("BENCH_FEW_KEYS", p.fewKeys),
		ManyKeys:       intv("BENCH_MANY_KEYS", p.manyKeys),
		NATSDir:        getenv("BENCH_NATS_DIR"),
		Cluster: clusterConfig{
			NATSURL: getenv("BENCH_CLUSTER_NATS_URL"), R1NATSURL: getenv("BENCH_CLUSTER_R1_NATS_URL"),
			NATSPIDs: pids("BENCH_CLUSTER_NATS_PIDS"), RedisAddrs: getenv("BENCH_CLUSTER_REDIS_ADDRS"),
			RedisPIDs: pids("BENCH_CLUSTER_REDIS_PIDS"), PipelineEvents: intv("BENCH_CLUSTER_PIPELINE_EVENTS", p.clusterEvents),
		},
	}
	if m := getenv("BENCH_CLUSTER_NATS_MONITORS"); m != "" {
		c.Cluster.NATSMonitors = strings.Split(m, ",")
	}
	if cl := c.Cluster; cl.NATSURL != "" || cl.R1NATSURL != "" || cl.RedisAddrs != "" {
		if cl.NATSURL == "" || cl.R1NATSURL == "" || cl.RedisAddrs == "" {
			errs = append(errs, errors.New("BENCH_CLUSTER_NATS_URL, BENCH_CLUSTER_R1_NATS_URL and BENCH_CLUSTER_REDIS_ADDRS go together (CLUSTER=1 sets them)"))
		}
		if cl.PipelineEvents < 1 {
			errs = append(errs, errors.New("BENCH_CLUSTER_PIPELINE_EVENTS must be at least 1"))
		}
	}
	for k, v := range map[string]string{"BENCH_DATABASE_URL": c.DatabaseURL, "BENCH_REDIS_ADDR": c.RedisAddr,
		"BENCH_NATS_URL": c.NATSURL, "BENCH_BIN_DIR": c.BinDir, "BENCH_WORK_DIR": c.WorkDir, "BENCH_OUT": c.Out} {
		if v == "" {
			errs = append(errs, fmt.Errorf("%s is required", k))
		}
	}
	if c.DatabaseURL != "" {
		if _, err := url.Parse(c.DatabaseURL); err != nil {
			errs = append(errs, errors.New("BENCH_DATABASE_URL is not a URL"))
		}
	}
	if c.BinDir != "" {
		if fi, err := os.Stat(c.BinDir); err != nil || !fi.IsDir() {
			errs = append(errs, fmt.Errorf("BENCH_BIN_DIR=%q is not a folder", c.BinDir))
		}
	}
	if c.Rounds < 1 || c.Connections < 1 || c.OpenWorkers < 1 || c.FixedRate < 1 {
		errs = append(errs, errors.New("BENCH_ROUNDS, BENCH_CONNECTIONS, BENCH_OPEN_WORKERS and BENCH_FIXED_RATE must be at least 1"))
	}
	if c.Keys < 1 || c.FewKeys < 1 || c.ManyKeys < c.FewKeys {
		errs = append(errs, errors.New("BENCH_KEYS and BENCH_FEW_KEYS must be at least 1 and BENCH_MANY_KEYS at least BENCH_FEW_KEYS"))
	}
	if c.PipelineEvents < 1 || c.ReplayEvents < c.PipelineEvents {
		errs = append(errs, errors.New("BENCH_PIPELINE_EVENTS must be at least 1 and BENCH_REPLAY_EVENTS at least as many"))
	}
	return c, errors.Join(errs...)
}

// proxyConfig is the bare reverse proxy's settings.
type proxyConfig struct {
	Port   int
	Target *url.URL
}

func proxyConfigFromEnv(getenv func(string) string) (proxyConfig, error) {
	var errs []error
	var c proxyConfig
	p, err := strconv.Atoi(getenv("PORT"))
	if err != nil || p < 1 || p > 65535 {
		errs = append(errs, errors.New("PORT must be a TCP port"))
	}
	c.Port = p
	u, err := url.Parse(getenv("TARGET_URL"))
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		errs = append(errs, errors.New("TARGET_URL must be an http(s) URL"))
	}
	c.Target = u
	return c, errors.Join(errs...)
}
