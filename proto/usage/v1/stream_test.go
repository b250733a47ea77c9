package usagev1_test

import (
	"context"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	usagev1 "github.com/mana/apigw/proto/usage/v1"
)

func TestEnsureStreamKeepsAnOwnersRetention(t *testing.T) {
	srv, err := server.NewServer(&server.Options{Host: "127.0.0.1", Port: -1, JetStream: true, StoreDir: t.TempDir(), NoLog: true, NoSigs: true})
	if err != nil {
		t.Fatal(err)
	}
	go srv.Start()
	defer srv.Shutdown()
	if !srv.ReadyForConnections(10 * time.Second) {
		t.Fatal("nats not ready")
	}
	nc, err := nats.Connect(srv.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	age := func() time.Duration {
		s, err := js.Stream(ctx, usagev1.StreamName)
		if err != nil {
			t.Fatal(err)
		}
		return s.CachedInfo().Config.MaxAge
	}
	if _, err := usagev1.EnsureStream(ctx, js, 0); err != nil {
		t.Fatal(err)
	}
	if age() != usagev1.DefaultMaxAge {
		t.Fatalf("new stream retention %v", age())
	}
	if _, err := usagev1.EnsureStream(ctx, js, 500*24*time.Hour); err != nil {
		t.Fatal(err)
	}
	if _, err := usagev1.EnsureStream(ctx, js, 0); err != nil {
		t.Fatal(err)
	}
	if age() != 500*24*time.Hour {
		t.Fatalf("a worker's ensure changed the retention to %v", age())
	}
	s, _ := js.Stream(ctx, usagev1.StreamName)
	cfg := s.CachedInfo().Config
	if cfg.Storage != jetstream.FileStorage || cfg.Duplicates < 2*time.Minute || cfg.Subjects[0] != "usage.>" {
		t.Fatalf("stream config %+v", cfg)
	}
}
