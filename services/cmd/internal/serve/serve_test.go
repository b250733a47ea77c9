package serve

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"
)

func TestLoadCommon(t *testing.T) {
	tests := []struct {
		name      string
		env       map[string]string
		want      Common
		withError bool
	}{
		{name: "defaults", env: nil, want: Common{Port: 3021, LogLevel: slog.LevelInfo}},
		{name: "set", env: map[string]string{"PORT": "8080", "LOG_LEVEL": "debug"}, want: Common{Port: 8080, LogLevel: slog.LevelDebug}},
		{name: "bad port", env: map[string]string{"PORT": "http"}, withError: true},
		{name: "port out of range", env: map[string]string{"PORT": "70000"}, withError: true},
		{name: "bad level", env: map[string]string{"LOG_LEVEL": "loud"}, withError: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := LoadCommon(func(k string) string { return tt.env[k] }, 3021)
			if tt.withError {
				if err == nil {
					t.Fatal("want an error")
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("got %+v, %v; want %+v", got, err, tt.want)
			}
		})
	}
}

func TestServeShutsDownGracefully(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	release := make(chan struct{})
	started := make(chan struct{})
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		close(started)
		<-release
		_, _ = io.WriteString(w, "done")
	})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- Serve(ctx, slog.New(slog.DiscardHandler), ln, h, Options{ShutdownTimeout: 5 * time.Second})
	}()

	body := make(chan string, 1)
	go func() {
		resp, err := http.Get("http://" + ln.Addr().String() + "/")
		if err != nil {
			body <- "error: " + err.Error()
			return
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		body <- string(b)
	}()
	<-started
	cancel() // shutdown begins while a request is in flight
	time.Sleep(50 * time.Millisecond)
	close(release)
	if got := <-body; got != "done" {
		t.Fatalf("in-flight request got %q, want it drained", got)
	}
	if err := <-done; err != nil {
		t.Fatalf("Serve: %v", err)
	}
}

func TestStandInRun(t *testing.T) {
	type cfg struct{ Port int }
	handler := func(cfg, *slog.Logger) (http.Handler, error) { return http.NotFoundHandler(), nil }
	tests := []struct {
		name      string
		env       map[string]string
		s         StandIn[cfg]
		withError func(*testing.T, error)
	}{
		{name: "every setting problem at once", env: map[string]string{"PORT": "x"},
			s: StandIn[cfg]{Name: "t", DefaultPort: 3000, Handler: handler, Config: func(_ func(string) string, port int) (cfg, error) {
				if port != 3000 {
					t.Errorf("port = %d, want the default after a bad PORT", port)
				}
				return cfg{}, errors.New("OWN_SETTING: bad")
			}},
			withError: func(t *testing.T, err error) {
				for _, s := range []string{"config:", "PORT", "OWN_SETTING"} {
					if !strings.Contains(err.Error(), s) {
						t.Errorf("error %q does not name %s", err, s)
					}
				}
			}},
		{name: "handler failure", s: StandIn[cfg]{Name: "t", DefaultPort: 3000,
			Handler: func(cfg, *slog.Logger) (http.Handler, error) { return nil, errors.New("no corpus") }},
			withError: func(t *testing.T, err error) {
				if err.Error() != "no corpus" {
					t.Errorf("error %q", err)
				}
			}},
		{name: "port in use", env: map[string]string{"PORT": "%PORT%"}, s: StandIn[cfg]{Name: "t", Handler: handler},
			withError: func(t *testing.T, err error) {
				if !strings.Contains(err.Error(), "listen on") {
					t.Errorf("error %q", err)
				}
			}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ln, err := net.Listen("tcp", ":0")
			if err != nil {
				t.Fatal(err)
			}
			defer ln.Close()
			port := strconv.Itoa(ln.Addr().(*net.TCPAddr).Port)
			getenv := func(k string) string { return strings.ReplaceAll(tt.env[k], "%PORT%", port) }
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			err = tt.s.run(ctx, getenv, io.Discard)
			if err == nil {
				t.Fatal("no error")
			}
			tt.withError(t, err)
		})
	}
}
