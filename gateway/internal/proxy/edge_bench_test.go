package proxy_test

// Benchmarks of the public edge's handler chain for `make bench`.
// The gateway is wired exactly as bin/gateway wires it (config.FromEnv,
// server.Connect and server.Build) against real PostgreSQL, Redis and NATS (JetStream, sync
// always); requests go straight into its Echo handler, the backend is the
// search stand-in in its own process. So -benchmem counts the gateway's own
// allocations (plus the benchmark's request and recorder), and the CPU profile
// is the gateway's. Redis commands and Postgres statements are counted on the
// wire by counting TCP relays between the gateway and the servers, so they
// are exactly what the gateway sends, however it is built inside.

import (
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/jmoiron/sqlx"

	"github.com/mana/apigw/gateway/internal/config"
	"github.com/mana/apigw/gateway/internal/keys"
	"github.com/mana/apigw/gateway/internal/pricing"
	"github.com/mana/apigw/gateway/internal/proxy"
	"github.com/mana/apigw/gateway/internal/server"
	"github.com/mana/apigw/services/testenv"
)

const (
	benchBody   = `{"query":"quantum computing","limit":1}`
	benchPepper = "bench-pepper-0123456789abcdef"
)

// benchStandIn starts the search stand-in binary and returns its URL.
func benchStandIn(b *testing.B) string {
	b.Helper()
	port := testenv.FreePort(b)
	u := fmt.Sprintf("http://127.0.0.1:%d", port)
	testenv.StartProcess(b, "search", testenv.BuildBinary(b, "./services/cmd/search"),
		[]string{"PORT=" + strconv.Itoa(port), "LOG_LEVEL=warn"}, u+"/health")
	return u
}

// benchGateway is a gateway wired like bin/gateway, with counters.
type benchGateway struct {
	handler  http.Handler
	secret   string
	redisCmd *atomic.Int64
	pgStmt   *atomic.Int64
}

func newBenchGateway(b *testing.B, backend string) *benchGateway {
	b.Helper()
	dsn := testenv.PostgresURL(b)
	rd := testenv.StartRedis(b)
	ns := testenv.StartNATS(b)
	g := &benchGateway{redisCmd: &atomic.Int64{}, pgStmt: &atomic.Int64{}}

	pgURL, err := url.Parse(dsn)
	if err != nil {
		b.Fatal(err)
	}
	pgRelay := startCountingRelay(b, pgURL.Host, func() wireCounter { return &pgCounter{n: g.pgStmt} })
	pgURL.Host = pgRelay
	redisRelay := startCountingRelay(b, rd.Addr, func() wireCounter { return &respCounter{n: g.redisCmd} })
	rhost, rport, _ := net.SplitHostPort(redisRelay)

	dir := b.TempDir()
	pricingFile := filepath.Join(dir, "pricing.yaml")
	if err := os.WriteFile(pricingFile, pricing.WithTiers(`bench: {rateLimitPerMinute: 1000000000, monthlyCredits: 1000000000000, endpoints: ["*"]}`), 0o600); err != nil {
		b.Fatal(err)
	}
	env := map[string]string{
		"PORT": strconv.Itoa(testenv.FreePort(b)), "DATABASE_URL": pgURL.String(), "REDIS_HOST": rhost, "REDIS_PORT": rport,
		"NATS_URL": ns.URL, "SEARCH_SERVICE_URL": backend, "STT_SERVICE_URL": "http://127.0.0.1:9", "TTS_SERVICE_URL": "http://127.0.0.1:9",
		"API_KEY_PEPPER": benchPepper, "PRICING_FILE": pricingFile, "SPOOL_DIR": filepath.Join(dir, "spool"), "GATEWAY_ID": "bench",
		"LOG_LEVEL": "warn",
	}
	cfg, err := config.FromEnv(func(k string) string { return env[k] })
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	clients, err := server.Connect(ctx, cfg, testenv.Logger(b))
	if err != nil {
		cancel()
		b.Fatal(err)
	}
	app, err := server.Build(ctx, cfg, clients, testenv.Logger(b))
	if err != nil {
		clients.Close()
		cancel()
		b.Fatal(err)
	}
	done := make(chan struct{})
	go func() { defer close(done); _ = app.Run(ctx) }()
	b.Cleanup(func() { cancel(); <-done })
	g.handler = app.Echo

	db, err := sqlx.Open("postgres", dsn)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = db.Close() })
	if g.secret, err = keys.Generate(); err != nil {
		b.Fatal(err)
	}
	k := &keys.Key{OwnerID: "bench-owner", Name: "bench", Prefix: keys.Prefix(g.secret), Tier: "bench", Active: true,
		RateLimitPerMinute: 1_000_000_000, MonthlyCredits: 1_000_000_000_000, Hash: keys.NewHasher([]byte(benchPepper)).Hash(g.secret)}
	if err := keys.NewStore(db).Create(context.Background(), k); err != nil {
		b.Fatal(err)
	}
	// Warm up: the key reaches the resolver's cache and its state Redis.
	for i := 0; i < 50; i++ {
		if code, body := g.do(); code != http.StatusOK {
			b.Fatalf("warm-up: %d %s", code, body)
		}
	}
	return g
}

func (g *benchGateway) do() (int, string) {
	req := httptest.NewRequest(http.MethodPost, "/v1/search", strings.NewReader(benchBody))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("X-API-Key", g.secret)
	w := httptest.NewRecorder()
	g.handler.ServeHTTP(w, req)
	if w.Code != http.StatusOK {
		return w.Code, w.Body.String()
	}
	return w.Code, ""
}

// BenchmarkEdgeFullPath is one POST /v1/search through the whole chain: key
// from the cache, rate limit and credit hold in Redis, the backend call, the
// usage event acknowledged by JetStream. serial: one request at a time (its
// allocations and counts are per request); parallel: 16 goroutines per CPU,
// so that Redis round trips and JetStream acknowledgements overlap.
func BenchmarkEdgeFullPath(b *testing.B) {
	g := newBenchGateway(b, benchStandIn(b))
	run := func(b *testing.B, parallel bool) {
		b.ReportAllocs()
		r0, p0 := g.redisCmd.Load(), g.pgStmt.Load()
		b.ResetTimer()
		if parallel {
			b.SetParallelism(16)
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					if code, body := g.do(); code != http.StatusOK {
						b.Errorf("status %d: %s", code, body)
						return
					}
				}
			})
		} else {
			for i := 0; i < b.N; i++ {
				if code, body := g.do(); code != http.StatusOK {
					b.Fatalf("status %d: %s", code, body)
				}
			}
		}
		b.StopTimer()
		b.ReportMetric(float64(g.redisCmd.Load()-r0)/float64(b.N), "redis-cmds/op")
		b.ReportMetric(float64(g.pgStmt.Load()-p0)/float64(b.N), "pg-stmts/op")
	}
	b.Run("serial", func(b *testing.B) { run(b, false) })
	b.Run("parallel", func(b *testing.B) { run(b, true) })
}

// BenchmarkBareProxy is the "features off" baseline of the same request: a
// bare httputil.ReverseProxy with the gateway's transport, same backend.
func BenchmarkBareProxy(b *testing.B) {
	backend, err := url.Parse(benchStandIn(b))
	if err != nil {
		b.Fatal(err)
	}
	rp := &httputil.ReverseProxy{
		Rewrite:   func(pr *httputil.ProxyRequest) { pr.SetURL(backend); pr.Out.URL.Path = "/search"; pr.SetXForwarded() },
		Transport: proxy.NewTransport(),
	}
	do := func() int {
		req := httptest.NewRequest(http.MethodPost, "/v1/search", strings.NewReader(benchBody))
		req.Header.Set("Content-Type", "application/json")
		w := httptest.NewRecorder()
		rp.ServeHTTP(w, req)
		return w.Code
	}
	run := func(b *testing.B, parallel bool) {
		b.ReportAllocs()
		b.ResetTimer()
		if parallel {
			b.SetParallelism(16)
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					if code := do(); code != http.StatusOK {
						b.Errorf("status %d", code)
						return
					}
				}
			})
			return
		}
		for i := 0; i < b.N; i++ {
			if code := do(); code != http.StatusOK {
				b.Fatalf("status %d", code)
			}
		}
	}
	b.Run("serial", func(b *testing.B) { run(b, false) })
	b.Run("parallel", func(b *testing.B) { run(b, true) })
}

// wireCounter counts requests in the client-to-server byte stream of one
// connection. feed must not allocate: it runs inside the benchmark.
type wireCounter interface{ feed(p []byte) }

// startCountingRelay relays loopback TCP connections to upstream, feeding
// what clients send to a counter per connection; it returns its address.
func startCountingRelay(b *testing.B, upstream string, counter func() wireCounter) string {
	b.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	var conns []net.Conn
	track := func(c net.Conn) {
		mu.Lock()
		conns = append(conns, c)
		mu.Unlock()
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			u, err := net.Dial("tcp", upstream)
			if err != nil {
				_ = c.Close()
				continue
			}
			track(c)
			track(u)
			wc := counter()
			wg.Add(2)
			go func() {
				defer wg.Done()
				buf := make([]byte, 32<<10)
				for {
					n, err := c.Read(buf)
					if n > 0 {
						wc.feed(buf[:n])
						if _, werr := u.Write(buf[:n]); werr != nil {
							break
						}
					}
					if err != nil {
						break
					}
				}
				_ = u.Close()
			}()
			go func() {
				defer wg.Done()
				_, _ = io.CopyBuffer(c, u, make([]byte, 32<<10))
				_ = c.Close()
			}()
		}
	}()
	b.Cleanup(func() {
		_ = l.Close()
		mu.Lock()
		for _, c := range conns {
			_ = c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	return l.Addr().String()
}

// respCounter counts RESP commands (arrays of bulk strings, which is all
// go-redis sends), pipelined or not.
type respCounter struct {
	n     *atomic.Int64
	state int   // 0 array marker, 1 array length, 2 bulk marker, 3 bulk length, 4 bulk payload
	num   int64 // the length being read
	left  int64 // bulks left in the array
	skip  int64 // payload bytes left (with CRLF)
}

func (c *respCounter) feed(p []byte) {
	for i := 0; i < len(p); {
		switch c.state {
		case 0:
			if p[i] == '*' {
				c.n.Add(1)
				c.state, c.num = 1, 0
			}
			i++
		case 1, 3:
			ch := p[i]
			i++
			switch {
			case ch >= '0' && ch <= '9':
				c.num = c.num*10 + int64(ch-'0')
			case ch == '\n' && c.state == 1:
				c.left, c.state = c.num, 2
				if c.left <= 0 {
					c.state = 0
				}
			case ch == '\n':
				c.skip, c.state = c.num+2, 4
			}
		case 2:
			i++ // '$'
			c.state, c.num = 3, 0
		case 4:
			k := min(int64(len(p)-i), c.skip)
			i += int(k)
			c.skip -= k
			if c.skip == 0 {
				c.left--
				c.state = 2
				if c.left == 0 {
					c.state = 0
				}
			}
		}
	}
}

// pgCounter counts the statements a client runs over the PostgreSQL wire
// protocol: simple queries ('Q') and executions of prepared ones ('E').
type pgCounter struct {
	n       *atomic.Int64
	started bool // the startup message (untyped) is behind us
	hdr     [5]byte
	hdrLen  int
	skip    int64
}

func (c *pgCounter) feed(p []byte) {
	for i := 0; i < len(p); {
		if c.skip > 0 {
			k := min(int64(len(p)-i), c.skip)
			i += int(k)
			c.skip -= k
			continue
		}
		need := 5 // type + length
		if !c.started {
			need = 4 // length only
		}
		for c.hdrLen < need && i < len(p) {
			c.hdr[c.hdrLen] = p[i]
			c.hdrLen++
			i++
		}
		if c.hdrLen < need {
			return
		}
		var length uint32
		if c.started {
			length = binary.BigEndian.Uint32(c.hdr[1:5])
			if t := c.hdr[0]; t == 'Q' || t == 'E' {
				c.n.Add(1)
			}
		} else {
			length = binary.BigEndian.Uint32(c.hdr[0:4])
			// An SSLRequest or GSSENCRequest is followed by the real startup message.
			if length == 8 {
				c.skip, c.hdrLen = 4, 0
				continue
			}
			c.started = true
		}
		c.skip = int64(length) - 4
		c.hdrLen = 0
	}
}
