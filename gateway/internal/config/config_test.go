package config

import (
	"net/url"
	"strings"
	"testing"
	"time"
)

func TestDefaultsAreTheSeeds(t *testing.T) {
	c, err := FromEnv(func(k string) string { return map[string]string{"DEV_MODE": "1"}[k] })
	if err != nil {
		t.Fatal(err)
	}
	if c.Port != 3030 || c.RedisAddr != "localhost:6379" || c.SearchURL.String() != "http://localhost:3021" ||
		c.STTURL.String() != "http://localhost:3020" || c.TTSURL.String() != "http://localhost:3022" ||
		c.AuthURL.String() != "http://localhost:3001" || c.NATSURL != "nats://127.0.0.1:4222" {
		t.Fatalf("defaults: %+v", c)
	}
	if c.APIKeyPepper != DevPepper || !c.DevPepperWarning || c.RateWindow != time.Minute {
		t.Fatalf("development defaults: pepper warning %v, window %s", c.DevPepperWarning, c.RateWindow)
	}
}

func TestEveryProblemIsReported(t *testing.T) {
	env := map[string]string{"PORT": "x", "SEARCH_SERVICE_URL": "ftp://a", "API_KEY_PEPPER": "short", "LOG_LEVEL": "loud", "PUBLISH_TIMEOUT": "-1s"}
	_, err := FromEnv(func(k string) string { return env[k] })
	if err == nil {
		t.Fatal("want error")
	}
	for _, k := range []string{"PORT", "SEARCH_SERVICE_URL", "API_KEY_PEPPER", "LOG_LEVEL", "PUBLISH_TIMEOUT"} {
		if !strings.Contains(err.Error(), k) {
			t.Errorf("error lacks %s: %v", k, err)
		}
	}
}

func TestDashboardSignIn(t *testing.T) {
	tests := []struct {
		name                    string
		env                     map[string]string
		wantPassword, wantLogin string
		withError               bool
	}{
		{name: "defaults: the issuer's login endpoint", env: map[string]string{},
			wantPassword: "http://localhost:3001/api/v1/auth/login"},
		{name: "follows MANA_CORE_AUTH_URL", env: map[string]string{"MANA_CORE_AUTH_URL": "https://auth.example.com/base"},
			wantPassword: "https://auth.example.com/base/api/v1/auth/login"},
		{name: "off", env: map[string]string{"DASHBOARD_PASSWORD_LOGIN_URL": "off", "DASHBOARD_LOGIN_URL": "https://auth.example.com/signin"},
			wantLogin: "https://auth.example.com/signin"},
		{name: "explicit", env: map[string]string{"DASHBOARD_PASSWORD_LOGIN_URL": "https://login.example.com/api/v1/auth/login"},
			wantPassword: "https://login.example.com/api/v1/auth/login"},
		{name: "bad URLs", env: map[string]string{"DASHBOARD_PASSWORD_LOGIN_URL": "javascript:alert(1)", "DASHBOARD_LOGIN_URL": "/relative"}, withError: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := FromEnv(func(k string) string {
				if k == "DEV_MODE" {
					return "1"
				}
				return tt.env[k]
			})
			if tt.withError {
				if err == nil || !strings.Contains(err.Error(), "DASHBOARD_PASSWORD_LOGIN_URL") || !strings.Contains(err.Error(), "DASHBOARD_LOGIN_URL") {
					t.Fatalf("error %v", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			str := func(u *url.URL) string {
				if u == nil {
					return ""
				}
				return u.String()
			}
			if got := str(c.DashboardPasswordLoginURL); got != tt.wantPassword {
				t.Errorf("password login %q, want %q", got, tt.wantPassword)
			}
			if got := str(c.DashboardLoginURL); got != tt.wantLogin {
				t.Errorf("login page %q, want %q", got, tt.wantLogin)
			}
		})
	}
}

// TestProductionSettings: outside DEV_MODE the gateway needs its own pepper
// and does not read the test-only settings.
func TestProductionSettings(t *testing.T) {
	const pepper = "a-production-secret-0123456789"
	tests := []struct {
		name      string
		env       map[string]string
		check     func(*testing.T, Config)
		withError func(*testing.T, error)
	}{
		{name: "no pepper", env: map[string]string{},
			withError: func(t *testing.T, err error) {
				if !strings.Contains(err.Error(), "API_KEY_PEPPER is required") {
					t.Errorf("error %q", err)
				}
			}},
		{name: "own pepper", env: map[string]string{"API_KEY_PEPPER": pepper},
			check: func(t *testing.T, c Config) {
				if c.APIKeyPepper != pepper || c.DevMode || c.DevPepperWarning || c.RateWindow != time.Minute {
					t.Errorf("config %+v", c)
				}
			}},
		{name: "rate window outside development", env: map[string]string{"API_KEY_PEPPER": pepper, "RATE_LIMIT_WINDOW": "3s"},
			withError: func(t *testing.T, err error) {
				if !strings.Contains(err.Error(), "RATE_LIMIT_WINDOW") || !strings.Contains(err.Error(), "DEV_MODE") {
					t.Errorf("error %q", err)
				}
			}},
		{name: "rate window in development", env: map[string]string{"DEV_MODE": "1", "RATE_LIMIT_WINDOW": "3s"},
			check: func(t *testing.T, c Config) {
				if c.RateWindow != 3*time.Second || c.APIKeyPepper != DevPepper {
					t.Errorf("config %+v", c)
				}
			}},
		{name: "dev mode is 1 or 0", env: map[string]string{"DEV_MODE": "yes", "API_KEY_PEPPER": pepper},
			withError: func(t *testing.T, err error) {
				if !strings.Contains(err.Error(), "DEV_MODE") {
					t.Errorf("error %q", err)
				}
			}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := FromEnv(func(k string) string { return tt.env[k] })
			if tt.withError != nil {
				if err == nil {
					t.Fatal("no error")
				}
				tt.withError(t, err)
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			tt.check(t, c)
		})
	}
}

func TestClusterSettings(t *testing.T) {
	tests := []struct {
		name      string
		env       map[string]string
		want      func(Config) bool
		withError string
	}{
		{name: "single servers by default", env: map[string]string{},
			want: func(c Config) bool { return c.RedisClusterAddrs == nil && c.StreamReplicas == 0 }}, // unset: keep what the stream has
		{name: "a Redis Cluster and three replicas", env: map[string]string{
			"REDIS_ADDRS": "10.0.0.1:6379, 10.0.0.2:6379,10.0.0.3:6379", "USAGE_STREAM_REPLICAS": "3",
			"NATS_URL": "nats://n1:4222,nats://n2:4222,nats://n3:4222"},
			want: func(c Config) bool {
				return strings.Join(c.RedisClusterAddrs, " ") == "10.0.0.1:6379 10.0.0.2:6379 10.0.0.3:6379" &&
					c.StreamReplicas == 3 && c.NATSURL == "nats://n1:4222,nats://n2:4222,nats://n3:4222"
			}},
		{name: "an even replica count", env: map[string]string{"USAGE_STREAM_REPLICAS": "2"}, withError: "USAGE_STREAM_REPLICAS"},
		{name: "a Redis address without port", env: map[string]string{"REDIS_ADDRS": "10.0.0.1:6379,10.0.0.2"}, withError: "REDIS_ADDRS"},
		{name: "an empty NATS URL in the list", env: map[string]string{"NATS_URL": "nats://n1:4222,,nats://n3:4222"}, withError: "NATS_URL"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.env["DEV_MODE"] = "1"
			c, err := FromEnv(func(k string) string { return tt.env[k] })
			if tt.withError != "" {
				if err == nil || !strings.Contains(err.Error(), tt.withError) {
					t.Fatalf("error %v, want one naming %s", err, tt.withError)
				}
				return
			}
			if err != nil || !tt.want(c) {
				t.Fatalf("%+v %v", c, err)
			}
		})
	}
}

func TestValidate(t *testing.T) {
	valid, err := FromEnv(func(k string) string { return map[string]string{"DEV_MODE": "1"}[k] })
	if err != nil {
		t.Fatal(err)
	}
	if err := valid.Validate(); err != nil {
		t.Fatalf("the defaults: %v", err)
	}
	tests := []struct {
		name      string
		change    func(*Config)
		withError []string
	}{
		{name: "no pepper", change: func(c *Config) { c.APIKeyPepper = "" }, withError: []string{"API_KEY_PEPPER is required"}},
		{name: "no publish timeout", change: func(c *Config) { c.PublishTimeout = 0 }, withError: []string{"PUBLISH_TIMEOUT"}},
		{name: "a negative shutdown timeout", change: func(c *Config) { c.ShutdownTimeout = -time.Second }, withError: []string{"SHUTDOWN_TIMEOUT"}},
		{name: "no backend", change: func(c *Config) { c.STTURL = nil }, withError: []string{"STT_SERVICE_URL"}},
		{name: "empty pools", change: func(c *Config) { c.Tuning.DBMaxOpenConns, c.Tuning.RedisPoolSize = 0, -1 },
			withError: []string{"tuning: ", "DBMaxOpenConns must be positive, not 0", "RedisPoolSize must be positive, not -1"}},
		{name: "no cache", change: func(c *Config) { c.Tuning.KeyCacheSize, c.Tuning.KeyCacheTTL = 0, 0 },
			withError: []string{"KeyCacheSize must be positive", "KeyCacheTTL must be a positive duration, not 0s"}},
		{name: "negative timeouts", change: func(c *Config) { c.Tuning.RedisIOTimeout, c.Tuning.NATSConnectTimeout = -time.Second, -1 },
			withError: []string{"RedisIOTimeout must be a positive duration, not -1s", "NATSConnectTimeout"}},
		{name: "more idle than open connections", change: func(c *Config) { c.Tuning.DBMaxIdleConns = c.Tuning.DBMaxOpenConns + 1 },
			withError: []string{"DBMaxIdleConns"}},
		{name: "more idle Redis connections than the pool", change: func(c *Config) { c.Tuning.RedisMinIdleConns = c.Tuning.RedisPoolSize + 1 },
			withError: []string{"RedisMinIdleConns"}},
		{name: "the hold deadline before the settling", change: func(c *Config) { c.Tuning.HoldDeadline = c.Tuning.HoldSettle },
			withError: []string{"HoldDeadline"}},
		{name: "every problem at once", change: func(c *Config) { c.Port, c.Tuning = 0, Tuning{} },
			withError: []string{"PORT", "StartTimeout", "ResyncPage", "ShutdownFlush"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := valid
			tt.change(&c)
			err := c.Validate()
			if err == nil {
				t.Fatal("no error")
			}
			for _, want := range tt.withError {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("error lacks %q: %v", want, err)
				}
			}
		})
	}
}

func TestAZeroShutdownTimeoutIsRefused(t *testing.T) {
	// Unset is the default; 0s set is a mistake, not a way to ask for it.
	_, err := FromEnv(func(k string) string { return map[string]string{"DEV_MODE": "1", "SHUTDOWN_TIMEOUT": "0s"}[k] })
	if err == nil || !strings.Contains(err.Error(), "SHUTDOWN_TIMEOUT") {
		t.Fatalf("error %v", err)
	}
}

func TestAnUnparsableSettingIsReportedOnce(t *testing.T) {
	_, err := FromEnv(func(k string) string {
		return map[string]string{"DEV_MODE": "1", "PUBLISH_TIMEOUT": "soon", "STT_SERVICE_URL": "ftp://x", "SHUTDOWN_TIMEOUT": "-1s"}[k]
	})
	if err == nil {
		t.Fatal("no error")
	}
	for _, k := range []string{"PUBLISH_TIMEOUT", "STT_SERVICE_URL", "SHUTDOWN_TIMEOUT"} {
		if n := strings.Count(err.Error(), k); n != 1 {
			t.Errorf("%s reported %d times: %v", k, n, err)
		}
	}
}
