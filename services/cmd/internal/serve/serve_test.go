package serve

import (
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
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
	go func() { done <- Serve(ctx, slog.New(slog.DiscardHandler), ln, h, Options{ShutdownTimeout: 5 * time.Second}) }()

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
