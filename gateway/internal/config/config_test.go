package config

import (
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
