package config

import (
	"net/url"
	"strings"
	"testing"
)

func TestDefaultsAreTheSeeds(t *testing.T) {
	c, err := FromEnv(func(string) string { return "" })
	if err != nil {
		t.Fatal(err)
	}
	if c.Port != 3030 || c.RedisAddr != "localhost:6379" || c.SearchURL.String() != "http://localhost:3021" ||
		c.STTURL.String() != "http://localhost:3020" || c.TTSURL.String() != "http://localhost:3022" ||
		c.AuthURL.String() != "http://localhost:3001" || c.NATSURL != "nats://127.0.0.1:4222" {
		t.Fatalf("defaults: %+v", c)
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
			c, err := FromEnv(func(k string) string { return tt.env[k] })
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
