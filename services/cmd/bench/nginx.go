package main

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"text/template"

	"github.com/mana/apigw/services/testenv/proc"
)

// nginxConfig is an nginx the harness runs: one upstream and one listener
// per site, its files under Prefix.
type nginxConfig struct {
	Prefix  string
	Workers string // worker_processes: "auto", or a number
	// Gateways puts nginx in front of gateways as .ci/cluster.sh does:
	// bodies streamed unbuffered, the client's host and address forwarded,
	// a refused connection tried on the next gateway.
	Gateways  bool
	Keepalive int // idle keep-alive connections per upstream
	Sites     []nginxSite
}

// nginxSite is one listener and the servers behind it.
type nginxSite struct {
	Upstream string
	Listen   int
	Servers  []int
}

var nginxTemplate = template.Must(template.New("nginx").Parse(`# written by the bench harness
{{- if .Gateways}}, as .ci/cluster.sh writes it{{end}}
worker_processes {{.Workers}};
pid {{.Prefix}}/nginx.pid;
error_log {{.Prefix}}/nginx-error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path {{.Prefix}}/body;
    proxy_temp_path {{.Prefix}}/proxy;
    fastcgi_temp_path {{.Prefix}}/fastcgi;
    uwsgi_temp_path {{.Prefix}}/uwsgi;
    scgi_temp_path {{.Prefix}}/scgi;
{{- range .Sites}}
    upstream {{.Upstream}} {
{{- range .Servers}}
        server 127.0.0.1:{{.}}{{if $.Gateways}} max_fails=1 fail_timeout=2s{{end}};
{{- end}}
        keepalive {{$.Keepalive}};
    }
{{- end}}
{{- range .Sites}}
    server {
        listen 127.0.0.1:{{.Listen}};
{{- if $.Gateways}}
        client_max_body_size 0;
        proxy_request_buffering off;
        proxy_buffering off;
{{- end}}
        location / {
            proxy_pass http://{{.Upstream}};
            proxy_http_version 1.1;
            proxy_set_header Connection "";
{{- if $.Gateways}}
            proxy_set_header Host $host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_connect_timeout 2s;
            proxy_next_upstream error timeout;
{{- end}}
        }
    }
{{- end}}
}
`))

// render is the nginx.conf of c.
func (c nginxConfig) render() ([]byte, error) {
	var b bytes.Buffer
	if err := nginxTemplate.Execute(&b, c); err != nil {
		return nil, fmt.Errorf("nginx config: %w", err)
	}
	return b.Bytes(), nil
}

// startNginx writes c's configuration and temp folders under c.Prefix and
// starts nginx in the foreground; the caller waits for its readiness.
func (h *harness) startNginx(name string, c nginxConfig) (*proc.Proc, error) {
	for _, d := range []string{"body", "proxy", "fastcgi", "uwsgi", "scgi"} {
		if err := os.MkdirAll(filepath.Join(c.Prefix, d), 0o777); err != nil {
			return nil, fmt.Errorf("%s: %w", name, err)
		}
	}
	b, err := c.render()
	if err != nil {
		return nil, err
	}
	conf := filepath.Join(c.Prefix, "nginx.conf")
	if err := os.WriteFile(conf, b, 0o644); err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	return h.start(name, h.cfg.Nginx, nil, "-p", c.Prefix, "-c", conf, "-g", "daemon off;")
}
