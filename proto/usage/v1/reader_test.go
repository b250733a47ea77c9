package usagev1_test

import (
	"errors"
	"io"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	usagev1 "github.com/mana/apigw/proto/usage/v1"
)

// TestReader reads an empty stream, then a stream of five messages from its
// start and from a sequence, up to the last message at the start, and
// follows new messages without UpToLast.
func TestReader(t *testing.T) {
	t.Parallel()
	srv, err := server.NewServer(&server.Options{Host: "127.0.0.1", Port: -1, JetStream: true, StoreDir: t.TempDir(), NoLog: true, NoSigs: true})
	if err != nil {
		t.Fatal(err)
	}
	go srv.Start()
	t.Cleanup(srv.Shutdown)
	if !srv.ReadyForConnections(10 * time.Second) {
		t.Fatal("nats not ready")
	}
	nc, err := nats.Connect(srv.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := usagev1.EnsureStream(t.Context(), js, 0); err != nil {
		t.Fatal(err)
	}
	publish := func(n int) {
		for range n {
			if _, err := js.Publish(t.Context(), usagev1.BatchSubject("gw"), []byte("x")); err != nil {
				t.Fatal(err)
			}
		}
	}
	// readAll reads up to the end and returns the sequences read.
	readAll := func(cfg usagev1.ReaderConfig) []uint64 {
		t.Helper()
		rd, err := usagev1.NewReader(t.Context(), js, cfg)
		if err != nil {
			t.Fatal(err)
		}
		defer rd.Stop()
		var seqs []uint64
		for {
			_, meta, err := rd.Next(t.Context())
			if errors.Is(err, io.EOF) {
				return seqs
			}
			if err != nil {
				t.Fatal(err)
			}
			seqs = append(seqs, meta.Sequence.Stream)
		}
	}
	if seqs := readAll(usagev1.ReaderConfig{UpToLast: true}); len(seqs) != 0 {
		t.Fatalf("empty stream: read %v", seqs)
	}
	publish(5)
	if seqs := readAll(usagev1.ReaderConfig{UpToLast: true, Buffer: 2}); len(seqs) != 5 || seqs[0] != 1 || seqs[4] != 5 {
		t.Fatalf("from the start: read %v, want 1…5", seqs)
	}
	from := jetstream.OrderedConsumerConfig{DeliverPolicy: jetstream.DeliverByStartSequencePolicy, OptStartSeq: 4}
	if seqs := readAll(usagev1.ReaderConfig{Consumer: from, UpToLast: true}); len(seqs) != 2 || seqs[0] != 4 {
		t.Fatalf("from sequence 4: read %v, want 4 and 5", seqs)
	}

	rd, err := usagev1.NewReader(t.Context(), js, usagev1.ReaderConfig{Consumer: jetstream.OrderedConsumerConfig{DeliverPolicy: jetstream.DeliverNewPolicy}})
	if err != nil {
		t.Fatal(err)
	}
	defer rd.Stop()
	publish(1)
	if _, meta, err := rd.Next(t.Context()); err != nil || meta.Sequence.Stream != 6 {
		t.Fatalf("following: %v, %v; want sequence 6", meta, err)
	}
}
