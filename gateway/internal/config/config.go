// Package config reads the gateway's settings from the environment (the
// seed's names and defaults) and validates them, reporting every problem.
package config

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"
)

// Config is every setting of the gateway binary.
type Config struct {
	Port        int
	DatabaseURL string
	RedisAddr   string
	// RedisClusterAddrs (REDIS_ADDRS, a comma list of host:port) are seed
	// nodes of a Redis Cluster; when set the gateway talks to the cluster
	// and RedisAddr is unused.
	RedisClusterAddrs []string
	RedisPassword     string
	// NATSURL is one NATS URL or a comma list of a cluster's servers.
	NATSURL string
	// StreamReplicas (USAGE_STREAM_REPLICAS) is the USAGE stream's replica
	// count on a JetStream cluster: 1, 3 or 5; 0 (unset) keeps the count
	// the stream has (a new stream gets 1), so an instance started without
	// the setting never shrinks a replicated stream.
	StreamReplicas int
	SearchURL      *url.URL
	STTURL         *url.URL
	TTSURL         *url.URL
	AuthURL        *url.URL
	JWTIssuer      string
	JWTAudience    string
	APIKeyPepper   string
	PricingFile    string
	SpoolDir       string
	SpoolMaxBytes  int64
	PublishTimeout time.Duration
	// OTLPEndpoint receives the traces (OTLP/HTTP); empty: tracing is off.
	OTLPEndpoint string
	StreamMaxAge time.Duration
	GatewayID    string
	LogLevel     string
	// ShutdownTimeout bounds how long a stopping gateway lets the calls in
	// flight finish before it cancels them (their holds are released);
	// 0 means the longest route's timeout plus the durability wait.
	ShutdownTimeout time.Duration
	RateWindow      time.Duration
	DevMode         bool // DEV_MODE=1: the development pepper and the test-only settings are allowed
	// ReconcileInterval is how often one of the gateways compares the Redis
	// balances of recently active keys with the ledger and corrects them;
	// ReconcileActiveWindow is how recently a key must have been charged.
	ReconcileInterval     time.Duration
	ReconcileActiveWindow time.Duration
	DevPepperWarning      bool
	// DashboardPasswordLoginURL is the issuer's email+password endpoint
	// the dashboard's sign-in form posts to; nil hides the form.
	DashboardPasswordLoginURL *url.URL
	// DashboardLoginURL is the issuer's sign-in page the dashboard links to.
	DashboardLoginURL *url.URL
	// UnknownKeysPerAddress and UnknownKeysTotal cap, per minute, the
	// presented keys that pass the checksum but match no key (each costs a
	// Postgres lookup), per client address and over all of them.
	UnknownKeysPerAddress, UnknownKeysTotal int
	// BacklogMaxEvents bounds the unapplied usage events each gateway
	// indexes for rebuilding balances (about 130 bytes each).
	BacklogMaxEvents int
	// CallsPerKey caps one key's calls in flight on this gateway (a tier's
	// concurrentCalls overrides it); ConnectionsPerAddress caps the open
	// connections per client address (0: no cap, e.g. behind a proxy that
	// is the only peer).
	CallsPerKey, ConnectionsPerAddress int
	// Tuning is the sizes and timings inside the gateway that are no
	// environment settings.
	Tuning Tuning
}

// Tuning is the pool and cache sizes, intervals and timeouts inside the
// gateway. They are no environment settings: DefaultTuning fits
// production, and tests shorten what they wait for.
type Tuning struct {
	// StartTimeout bounds the start: Postgres and its migrations, the
	// usage stream and the Redis scripts.
	StartTimeout time.Duration
	// The Postgres connection pool.
	DBMaxOpenConns, DBMaxIdleConns int
	DBConnMaxIdleTime              time.Duration
	// RedisPoolSize and RedisMinIdleConns are per server (per master of a
	// cluster); RedisIOTimeout bounds each read and write;
	// RedisClusterReload is how often a cluster's slot map is reloaded, so
	// that a failover is noticed before a MOVED reply tells.
	RedisPoolSize, RedisMinIdleConns                     int
	RedisDialTimeout, RedisIOTimeout, RedisClusterReload time.Duration
	// NATSReconnectWait is the pause between reconnect attempts;
	// NATSConnectTimeout bounds one attempt.
	NATSReconnectWait, NATSConnectTimeout time.Duration
	// PublishMaxPending bounds the usage events published and not yet
	// acknowledged; PublishAckTimeout is how long one waits for its
	// acknowledgement before it is spooled; SpoolDrainInterval is how often
	// the spool is retried.
	PublishMaxPending                     int
	PublishAckTimeout, SpoolDrainInterval time.Duration
	// HoldSettle is how long a gateway asked for its holds lets its
	// tentative ones settle (one Redis round trip); HoldDeadline is how
	// long the asker waits for every live gateway's answer;
	// PresenceInterval is how often a gateway announces that it is live.
	HoldSettle, HoldDeadline, PresenceInterval time.Duration
	// KeyCacheSize keys are cached for KeyCacheTTL, presented keys that
	// match none for UnknownKeyTTL.
	KeyCacheSize               int
	KeyCacheTTL, UnknownKeyTTL time.Duration
	// LastUsedInterval is how often the keys' last use is written.
	LastUsedInterval time.Duration
	// Every ResyncInterval the keys changed since the last pass are written
	// to Redis again, ResyncPage of them per query.
	ResyncInterval time.Duration
	ResyncPage     int
	// ProbeInterval is how often the dependencies are probed for the
	// dependency_up metric.
	ProbeInterval time.Duration
	// ShutdownFlush bounds the spool drain and the trace export at the end
	// of a shutdown.
	ShutdownFlush time.Duration
}

// DefaultTuning is the tuning of a production gateway.
func DefaultTuning() Tuning {
	return Tuning{
		StartTimeout:       60 * time.Second,
		DBMaxOpenConns:     32,
		DBMaxIdleConns:     16,
		DBConnMaxIdleTime:  5 * time.Minute,
		RedisPoolSize:      256,
		RedisMinIdleConns:  8,
		RedisDialTimeout:   2 * time.Second,
		RedisIOTimeout:     time.Second,
		RedisClusterReload: time.Second,
		NATSReconnectWait:  250 * time.Millisecond,
		NATSConnectTimeout: 2 * time.Second,
		PublishMaxPending:  8192,
		PublishAckTimeout:  2 * time.Second,
		SpoolDrainInterval: time.Second,
		HoldSettle:         200 * time.Millisecond,
		HoldDeadline:       400 * time.Millisecond,
		PresenceInterval:   time.Second,
		KeyCacheSize:       100_000,
		KeyCacheTTL:        10 * time.Minute,
		UnknownKeyTTL:      10 * time.Second,
		LastUsedInterval:   5 * time.Second,
		ResyncInterval:     2 * time.Second,
		ResyncPage:         1000,
		ProbeInterval:      5 * time.Second,
		ShutdownFlush:      20 * time.Second,
	}
}

// Validate reports every size that is not positive, every timing that is
// not a positive duration, and the orderings the gateway relies on.
func (t Tuning) Validate() error {
	var errs []error
	for _, s := range []struct {
		name string
		n    int
	}{
		{"DBMaxOpenConns", t.DBMaxOpenConns}, {"DBMaxIdleConns", t.DBMaxIdleConns},
		{"RedisPoolSize", t.RedisPoolSize}, {"PublishMaxPending", t.PublishMaxPending},
		{"KeyCacheSize", t.KeyCacheSize}, {"ResyncPage", t.ResyncPage},
	} {
		if s.n <= 0 {
			errs = append(errs, fmt.Errorf("%s must be positive, not %d", s.name, s.n))
		}
	}
	for _, d := range []struct {
		name string
		d    time.Duration
	}{
		{"StartTimeout", t.StartTimeout}, {"DBConnMaxIdleTime", t.DBConnMaxIdleTime},
		{"RedisDialTimeout", t.RedisDialTimeout}, {"RedisIOTimeout", t.RedisIOTimeout}, {"RedisClusterReload", t.RedisClusterReload},
		{"NATSReconnectWait", t.NATSReconnectWait}, {"NATSConnectTimeout", t.NATSConnectTimeout},
		{"PublishAckTimeout", t.PublishAckTimeout}, {"SpoolDrainInterval", t.SpoolDrainInterval},
		{"HoldSettle", t.HoldSettle}, {"HoldDeadline", t.HoldDeadline}, {"PresenceInterval", t.PresenceInterval},
		{"KeyCacheTTL", t.KeyCacheTTL}, {"UnknownKeyTTL", t.UnknownKeyTTL}, {"LastUsedInterval", t.LastUsedInterval},
		{"ResyncInterval", t.ResyncInterval}, {"ProbeInterval", t.ProbeInterval}, {"ShutdownFlush", t.ShutdownFlush},
	} {
		if d.d <= 0 {
			errs = append(errs, fmt.Errorf("%s must be a positive duration, not %s", d.name, d.d))
		}
	}
	if t.RedisMinIdleConns < 0 || t.RedisMinIdleConns > t.RedisPoolSize {
		errs = append(errs, fmt.Errorf("RedisMinIdleConns must be between 0 and RedisPoolSize (%d), not %d", t.RedisPoolSize, t.RedisMinIdleConns))
	}
	if t.DBMaxIdleConns > t.DBMaxOpenConns {
		errs = append(errs, fmt.Errorf("DBMaxIdleConns (%d) must not exceed DBMaxOpenConns (%d)", t.DBMaxIdleConns, t.DBMaxOpenConns))
	}
	if t.HoldDeadline > 0 && t.HoldDeadline <= t.HoldSettle {
		errs = append(errs, fmt.Errorf("HoldDeadline (%s) must exceed HoldSettle (%s): the asker waits for the answers the others settle first", t.HoldDeadline, t.HoldSettle))
	}
	return errors.Join(errs...)
}

// DevPepper is the pepper used when API_KEY_PEPPER is unset and DEV_MODE=1.
const DevPepper = "mana-dev-pepper-change-me"

// FromEnv reads the environment; getenv is os.Getenv outside tests.
func FromEnv(getenv func(string) string) (Config, error) {
	var errs []error
	get := func(k, def string) string {
		if v := getenv(k); v != "" {
			return v
		}
		return def
	}
	parseURL := func(k, def string) *url.URL {
		u, err := url.Parse(get(k, def))
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			errs = append(errs, fmt.Errorf("%s must be an http(s) URL", k))
			return nil
		}
		return u
	}
	parseInt := func(k, def string) int64 {
		n, err := strconv.ParseInt(get(k, def), 10, 64)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s must be an integer", k))
		}
		return n
	}
	parseDur := func(k, def string) time.Duration {
		d, err := time.ParseDuration(get(k, def))
		if err != nil {
			errs = append(errs, fmt.Errorf("%s must be a positive duration like 2s", k))
		}
		return d
	}
	host, _ := os.Hostname()
	c := Config{
		Port:                  int(parseInt("PORT", "3030")),
		DatabaseURL:           get("DATABASE_URL", "postgres://postgres:postgres@localhost:5432/manacore?sslmode=disable"),
		RedisAddr:             net.JoinHostPort(get("REDIS_HOST", "localhost"), get("REDIS_PORT", "6379")),
		RedisPassword:         getenv("REDIS_PASSWORD"),
		NATSURL:               get("NATS_URL", "nats://127.0.0.1:4222"),
		SearchURL:             parseURL("SEARCH_SERVICE_URL", "http://localhost:3021"),
		STTURL:                parseURL("STT_SERVICE_URL", "http://localhost:3020"),
		TTSURL:                parseURL("TTS_SERVICE_URL", "http://localhost:3022"),
		AuthURL:               parseURL("MANA_CORE_AUTH_URL", "http://localhost:3001"),
		JWTIssuer:             get("JWT_ISSUER", "mana-core-auth"),
		JWTAudience:           get("JWT_AUDIENCE", "mana-api-gateway"),
		APIKeyPepper:          getenv("API_KEY_PEPPER"),
		PricingFile:           getenv("PRICING_FILE"),
		SpoolDir:              get("SPOOL_DIR", ".data/spool"),
		SpoolMaxBytes:         parseInt("SPOOL_MAX_BYTES", strconv.Itoa(256<<20)),
		PublishTimeout:        parseDur("PUBLISH_TIMEOUT", "5s"),
		OTLPEndpoint:          get("OTEL_EXPORTER_OTLP_ENDPOINT", ""),
		StreamMaxAge:          parseDur("USAGE_STREAM_MAX_AGE", "9600h"),
		GatewayID:             get("GATEWAY_ID", host),
		LogLevel:              get("LOG_LEVEL", "info"),
		RateWindow:            time.Minute,
		ReconcileInterval:     parseDur("RECONCILE_INTERVAL", "30s"),
		ReconcileActiveWindow: parseDur("RECONCILE_ACTIVE_WINDOW", "24h"),
	}
	c.StreamReplicas = int(parseInt("USAGE_STREAM_REPLICAS", "0"))
	if v := getenv("REDIS_ADDRS"); v != "" {
		for _, a := range strings.Split(v, ",") {
			a = strings.TrimSpace(a)
			if h, p, err := net.SplitHostPort(a); err != nil || h == "" || p == "" {
				errs = append(errs, fmt.Errorf("REDIS_ADDRS must be a comma list of host:port, not %q", a))
				continue
			}
			c.RedisClusterAddrs = append(c.RedisClusterAddrs, a)
		}
	}
	for _, u := range strings.Split(c.NATSURL, ",") {
		if strings.TrimSpace(u) == "" {
			errs = append(errs, errors.New("NATS_URL must be a NATS URL or a comma list of them, without empty entries"))
			break
		}
	}
	// Unset means the default; set, it must be positive.
	if v := getenv("SHUTDOWN_TIMEOUT"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil || d <= 0 {
			errs = append(errs, errors.New("SHUTDOWN_TIMEOUT must be a positive duration like 2s"))
		}
		c.ShutdownTimeout = d
	}
	c.UnknownKeysPerAddress = int(parseInt("UNKNOWN_KEYS_PER_ADDRESS", "600"))
	c.UnknownKeysTotal = int(parseInt("UNKNOWN_KEYS_TOTAL", "12000"))
	c.BacklogMaxEvents = int(parseInt("BACKLOG_MAX_EVENTS", "1000000"))
	c.CallsPerKey = int(parseInt("CONCURRENT_CALLS_PER_KEY", "64"))
	c.ConnectionsPerAddress = int(parseInt("CONNECTIONS_PER_ADDRESS", "1024"))
	switch dev := getenv("DEV_MODE"); dev {
	case "1":
		c.DevMode = true
	case "", "0":
	default:
		errs = append(errs, fmt.Errorf("DEV_MODE must be 1 or 0, not %q", dev))
	}
	if c.APIKeyPepper == "" && c.DevMode {
		c.APIKeyPepper = DevPepper
	}
	c.DevPepperWarning = c.APIKeyPepper == DevPepper
	switch v := getenv("DASHBOARD_PASSWORD_LOGIN_URL"); {
	case v == "off":
	case v == "" && c.AuthURL != nil:
		c.DashboardPasswordLoginURL = c.AuthURL.JoinPath("/api/v1/auth/login")
	case v != "":
		c.DashboardPasswordLoginURL = parseURL("DASHBOARD_PASSWORD_LOGIN_URL", v)
	}
	if v := getenv("DASHBOARD_LOGIN_URL"); v != "" {
		c.DashboardLoginURL = parseURL("DASHBOARD_LOGIN_URL", v)
	}
	// The tiers are priced per minute; a shorter window is for tests.
	switch {
	case c.DevMode:
		c.RateWindow = parseDur("RATE_LIMIT_WINDOW", "60s")
	case getenv("RATE_LIMIT_WINDOW") != "":
		errs = append(errs, errors.New("RATE_LIMIT_WINDOW is a test setting, read only with DEV_MODE=1"))
	}
	c.Tuning = DefaultTuning()
	// A setting that did not parse is zero, which Validate reports again.
	seen := map[string]bool{}
	for _, err := range errs {
		seen[err.Error()] = true
	}
	if err := c.Validate(); err != nil {
		for _, err := range err.(interface{ Unwrap() []error }).Unwrap() {
			if !seen[err.Error()] {
				errs = append(errs, err)
			}
		}
	}
	return c, errors.Join(errs...)
}

// Validate reports every problem of c at once: values out of range, a
// missing pepper, and the tuning's. FromEnv calls it; a Config built in
// code (a test's) is checked the same way.
func (c Config) Validate() error {
	var errs []error
	if c.APIKeyPepper == "" {
		errs = append(errs, errors.New("API_KEY_PEPPER is required (a secret of at least 16 bytes; DEV_MODE=1 uses a public development pepper)"))
	}
	if c.CallsPerKey < 1 || c.ConnectionsPerAddress < 0 {
		errs = append(errs, errors.New("CONCURRENT_CALLS_PER_KEY must be at least 1 and CONNECTIONS_PER_ADDRESS not negative (0: no cap)"))
	}
	for _, d := range []struct {
		name string
		d    time.Duration
	}{
		{"PUBLISH_TIMEOUT", c.PublishTimeout}, {"USAGE_STREAM_MAX_AGE", c.StreamMaxAge}, {"RATE_LIMIT_WINDOW", c.RateWindow},
		{"RECONCILE_INTERVAL", c.ReconcileInterval}, {"RECONCILE_ACTIVE_WINDOW", c.ReconcileActiveWindow},
	} {
		if d.d <= 0 {
			errs = append(errs, fmt.Errorf("%s must be a positive duration like 2s", d.name))
		}
	}
	if c.ShutdownTimeout < 0 {
		errs = append(errs, errors.New("SHUTDOWN_TIMEOUT must be a positive duration like 2s"))
	}
	for _, u := range []struct {
		name string
		u    *url.URL
	}{{"SEARCH_SERVICE_URL", c.SearchURL}, {"STT_SERVICE_URL", c.STTURL}, {"TTS_SERVICE_URL", c.TTSURL}, {"MANA_CORE_AUTH_URL", c.AuthURL}} {
		if u.u == nil {
			errs = append(errs, fmt.Errorf("%s must be an http(s) URL", u.name))
		}
	}
	if c.UnknownKeysPerAddress < 10 || c.UnknownKeysTotal < c.UnknownKeysPerAddress {
		errs = append(errs, errors.New("UNKNOWN_KEYS_PER_ADDRESS must be at least 10 and UNKNOWN_KEYS_TOTAL at least as large"))
	}
	if c.Port <= 0 || c.Port > 65535 {
		errs = append(errs, errors.New("PORT must be a TCP port"))
	}
	if c.APIKeyPepper != "" && len(c.APIKeyPepper) < 16 {
		errs = append(errs, errors.New("API_KEY_PEPPER must be at least 16 bytes"))
	}
	if c.SpoolMaxBytes < 1<<20 {
		errs = append(errs, errors.New("SPOOL_MAX_BYTES must be at least 1 MiB"))
	}
	if c.BacklogMaxEvents < 1000 {
		errs = append(errs, errors.New("BACKLOG_MAX_EVENTS must be at least 1000"))
	}
	if e := c.OTLPEndpoint; e != "" {
		if u, err := url.Parse(e); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			errs = append(errs, errors.New("OTEL_EXPORTER_OTLP_ENDPOINT must be an http(s) URL (OTLP/HTTP, e.g. http://collector:4318)"))
		}
	}
	switch c.StreamReplicas {
	case 0, 1, 3, 5:
	default:
		errs = append(errs, errors.New("USAGE_STREAM_REPLICAS must be 1, 3 or 5 (a JetStream cluster of at least that many servers)"))
	}
	if c.StreamMaxAge < 24*time.Hour {
		errs = append(errs, errors.New("USAGE_STREAM_MAX_AGE must be at least 24h"))
	}
	if _, err := url.Parse(c.DatabaseURL); err != nil {
		errs = append(errs, errors.New("DATABASE_URL is not a URL"))
	}
	switch c.LogLevel {
	case "debug", "info", "warn", "error":
	default:
		errs = append(errs, errors.New("LOG_LEVEL must be debug, info, warn or error"))
	}
	if err := c.Tuning.Validate(); err != nil {
		errs = append(errs, fmt.Errorf("tuning: %w", err))
	}
	return errors.Join(errs...)
}
