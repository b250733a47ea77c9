package main

import (
	"errors"
	"reflect"
	"testing"
	"time"

	"github.com/mana/apigw/services/cmd/internal/serve"
)

func TestLoadConfig(t *testing.T) {
	tests := []struct {
		name      string
		env       map[string]string
		allow     []string
		publicURL string
		timeout   time.Duration
		withError bool
	}{
		{name: "defaults", publicURL: "http://localhost:3021"},
		{name: "port moves the public URL", env: map[string]string{"PORT": "4000"}, publicURL: "http://localhost:4000"},
		{name: "allow list", env: map[string]string{"EXTRACT_ALLOW_HOSTS": " localhost:3021, search:3021 ,,", "PUBLIC_URL": "http://search:3021"},
			allow: []string{"localhost:3021", "search:3021"}, publicURL: "http://search:3021"},
		{name: "timeout", env: map[string]string{"EXTRACT_TIMEOUT": "3s"}, publicURL: "http://localhost:3021", timeout: 3 * time.Second},
		{name: "bad timeout", env: map[string]string{"EXTRACT_TIMEOUT": "soon"}, withError: true},
		{name: "bad port and timeout", env: map[string]string{"PORT": "x", "EXTRACT_TIMEOUT": "-1s"}, withError: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			getenv := func(k string) string { return tt.env[k] }
			common, err := serve.LoadCommon(getenv, 3021)
			cfg, cerr := loadConfig(getenv, common.Port)
			err = errors.Join(err, cerr)
			if tt.withError {
				if err == nil {
					t.Fatal("want an error")
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(cfg.ExtractAllowHosts, tt.allow) || cfg.PublicURL != tt.publicURL || cfg.ExtractTimeout != tt.timeout {
				t.Fatalf("config %+v", cfg)
			}
		})
	}
}
