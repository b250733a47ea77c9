package usage

import (
	"context"
	"errors"
	"io"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/protobuf/proto"

	usagev1 "github.com/mana/apigw/proto/usage/v1"
	"github.com/mana/apigw/services/testenv"
)

type pubEnv struct {
	srv    *testenv.NATS
	nc     *nats.Conn
	js     jetstream.JetStream
	stream jetstream.Stream
	spool  *Spool
	pub    *Publisher
}

func newPubEnv(t *testing.T, spoolMax int64, cfg PublisherConfig) *pubEnv {
	t.Helper()
	srv := testenv.StartNATS(t)
	nc, err := nats.Connect(srv.URL, nats.MaxReconnects(-1), nats.ReconnectWait(50*time.Millisecond), nats.ReconnectBufSize(-1))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	stream, err := usagev1.EnsureStream(t.Context(), js, 0)
	if err != nil {
		t.Fatal(err)
	}
	spool, err := OpenSpool(t.TempDir(), spoolMax, testenv.Logger(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = spool.Close() })
	if cfg.AckTimeout == 0 {
		cfg.AckTimeout = 2 * time.Second
	}
	if cfg.DrainInterval == 0 {
		cfg.DrainInterval = 50 * time.Millisecond
	}
	cfg.GatewayID = "gw-test"
	p, err := NewPublisher(cfg, nc, js, spool, testenv.Logger(t), nil)
	if err != nil {
		t.Fatal(err)
	}
	return &pubEnv{srv: srv, nc: nc, js: js, stream: stream, spool: spool, pub: p}
}

// publishAll publishes n events concurrently and returns their IDs; every
// Publish must succeed.
func (e *pubEnv) publishAll(t *testing.T, n int) map[string]bool {
	t.Helper()
	var mu sync.Mutex
	var wg sync.WaitGroup
	ids := map[string]bool{}
	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ev := event()
			if err := e.pub.Publish(t.Context(), ev); err != nil {
				t.Error(err)
			}
			mu.Lock()
			ids[ev.EventId] = true
			mu.Unlock()
		}()
	}
	wg.Wait()
	return ids
}

// readStream reads every message of the stream and checks that each is a
// batch published under its own ID; it returns the event IDs (each must
// appear once) and the number of messages.
func (e *pubEnv) readStream(t *testing.T) (map[string]bool, int) {
	t.Helper()
	got := map[string]bool{}
	msgs := 0
	e.eachMessage(t, func(m jetstream.Msg, dm usagev1.Message) {
		msgs++
		if m.Subject() != usagev1.BatchSubject("gw-test") {
			t.Fatalf("message on %s", m.Subject())
		}
		if id := m.Headers().Get(jetstream.MsgIDHeader); id != dm.BatchID {
			t.Fatalf("Nats-Msg-Id %q, batch ID %q", id, dm.BatchID)
		}
		for _, ev := range dm.Events {
			if got[ev.EventId] {
				t.Fatalf("event %s twice on the stream", ev.EventId)
			}
			got[ev.EventId] = true
		}
	})
	return got, msgs
}

// eachMessage calls f with every message of the stream, decoded, up to the
// last one stored when it starts.
func (e *pubEnv) eachMessage(t *testing.T, f func(jetstream.Msg, usagev1.Message)) {
	t.Helper()
	rd, err := usagev1.NewReader(t.Context(), e.js, usagev1.ReaderConfig{UpToLast: true})
	if err != nil {
		t.Fatal(err)
	}
	defer rd.Stop()
	for n := 0; ; n++ {
		ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
		m, _, err := rd.Next(ctx)
		cancel()
		if errors.Is(err, io.EOF) {
			return
		}
		if err != nil {
			t.Fatalf("stream stopped delivering after %d of %d messages: %v", n, rd.Pending(), err)
		}
		dm, err := usagev1.DecodeMessage(m.Subject(), m.Data())
		if err != nil {
			t.Fatal(err)
		}
		f(m, dm)
	}
}

func sameIDs(t *testing.T, want, got map[string]bool) {
	t.Helper()
	if len(want) != len(got) {
		t.Fatalf("%d events published, %d on the stream", len(want), len(got))
	}
	for id := range want {
		if !got[id] {
			t.Fatalf("event %s missing from the stream", id)
		}
	}
}

func TestGroupCommitPutsConcurrentEventsInFewMessages(t *testing.T) {
	e := newPubEnv(t, 1<<20, PublisherConfig{})
	const n = 400
	ids := e.publishAll(t, n)
	got, msgs := e.readStream(t)
	sameIDs(t, ids, got)
	// 400 callers arriving together while the first batch is written: the
	// rest share a handful of batches. One message per event would be 400.
	if msgs > n/4 {
		t.Fatalf("%d events took %d messages; group commit should need far fewer", n, msgs)
	}
	t.Logf("%d events in %d JetStream messages (%.1f events per message)", n, msgs, float64(n)/float64(msgs))
}

func TestIdlePublishIsOneMessagePerEvent(t *testing.T) {
	e := newPubEnv(t, 1<<20, PublisherConfig{})
	ids := map[string]bool{}
	for range 3 {
		ev := event()
		if err := e.pub.Publish(t.Context(), ev); err != nil {
			t.Fatal(err)
		}
		ids[ev.EventId] = true
	}
	got, msgs := e.readStream(t)
	sameIDs(t, ids, got)
	if msgs != 3 {
		t.Fatalf("3 sequential events took %d messages; an idle gateway seals at once", msgs)
	}
}

func TestBatchLimitsSealEarly(t *testing.T) {
	e := newPubEnv(t, 1<<20, PublisherConfig{MaxBatchEvents: 8})
	ids := e.publishAll(t, 200)
	got, _ := e.readStream(t)
	sameIDs(t, ids, got)
	e.eachMessage(t, func(_ jetstream.Msg, dm usagev1.Message) {
		if len(dm.Events) > 8 {
			t.Fatalf("a batch of %d events with MaxBatchEvents 8", len(dm.Events))
		}
	})
}

func TestPublishSpoolsWhileNATSIsDownAndDrainsAfter(t *testing.T) {
	// An acknowledgement under fsync-always on a busy machine may take a
	// while: the timeout is generous, so that "nothing spooled while NATS
	// was up" holds however slow the disk, and the outage below is one the
	// client has noticed, so that spooling does not wait for it.
	e := newPubEnv(t, 1<<20, PublisherConfig{AckTimeout: 10 * time.Second})
	ids := e.publishAll(t, 50)
	if e.spool.Size() != 0 {
		t.Fatal("events spooled while NATS was up")
	}
	e.srv.Stop()
	waitFor(t, 10*time.Second, func() bool { return !e.nc.IsConnected() }, "the client to notice NATS is down")
	for id := range e.publishAll(t, 50) {
		ids[id] = true
	}
	if e.spool.Size() == 0 {
		t.Fatal("nothing spooled while NATS was down")
	}
	e.srv.Start()
	rctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	go e.pub.Run(rctx)
	waitFor(t, 15*time.Second, func() bool { return e.spool.Size() == 0 }, "the spool to drain")
	// Drain again: nothing left, nothing republished twice.
	if err := e.pub.Drain(t.Context()); err != nil {
		t.Fatal(err)
	}
	got, _ := e.readStream(t)
	sameIDs(t, ids, got)
}

func TestNotDurableWhenNATSIsDownAndTheSpoolIsFull(t *testing.T) {
	e := newPubEnv(t, 64, PublisherConfig{AckTimeout: 200 * time.Millisecond})
	e.srv.Stop()
	waitFor(t, 10*time.Second, func() bool { return !e.nc.IsConnected() }, "the client to notice NATS is down")
	if e.pub.CanAccept() {
		t.Fatal("CanAccept with NATS down and no spool room")
	}
	err := e.pub.Publish(t.Context(), event())
	if !errors.Is(err, ErrNotDurable) {
		t.Fatalf("Publish = %v, want ErrNotDurable", err)
	}
}

func TestDrainRepublishesOlderSingleEvents(t *testing.T) {
	e := newPubEnv(t, 1<<20, PublisherConfig{})
	ev := event()
	rec, err := proto.Marshal(ev)
	if err != nil {
		t.Fatal(err)
	}
	if err := e.spool.Append(t.Context(), rec); err != nil {
		t.Fatal(err)
	}
	if err := e.pub.Drain(t.Context()); err != nil {
		t.Fatal(err)
	}
	m, err := e.stream.GetLastMsgForSubject(t.Context(), usagev1.Subject(ev.KeyId))
	if err != nil {
		t.Fatal(err)
	}
	if m.Header.Get(jetstream.MsgIDHeader) != ev.EventId {
		t.Fatalf("republished single event has Nats-Msg-Id %q", m.Header.Get(jetstream.MsgIDHeader))
	}
	dm, err := usagev1.DecodeMessage(m.Subject, m.Data)
	if err != nil || len(dm.Events) != 1 || dm.Events[0].EventId != ev.EventId {
		t.Fatalf("republished %v, %v", dm, err)
	}
}

// waitFor polls cond until it holds or the timeout passes.
func waitFor(t *testing.T, timeout time.Duration, cond func() bool, what string) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestSlowBatchDoesNotHoldAcknowledgedOnes: the first batch's
// acknowledgement is held back; a later batch, sealed by the size limit and
// written beside it, is acknowledged at once, and its callers return while the
// first batch's caller is still waiting. JetStream itself is stood in for by a
// subscriber on the batch subject (no stream captures it) that answers each
// batch with a publish acknowledgement when the test lets it.
func TestSlowBatchDoesNotHoldAcknowledgedOnes(t *testing.T) {
	srv := testenv.StartNATS(t)
	nc, err := nats.Connect(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	spool, err := OpenSpool(t.TempDir(), 1<<20, testenv.Logger(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = spool.Close() })
	// A long AckTimeout: the slow batch must stay unacknowledged, not spooled.
	pub, err := NewPublisher(PublisherConfig{AckTimeout: time.Minute, DrainInterval: time.Second, GatewayID: "gw-test", MaxBatchEvents: 4},
		nc, js, spool, testenv.Logger(t), nil)
	if err != nil {
		t.Fatal(err)
	}

	release := make(chan struct{})
	var mu sync.Mutex
	var sizes []int // events per batch, in arrival order
	ackSub, err := nc.Subscribe(usagev1.BatchSubject("gw-test"), func(m *nats.Msg) {
		dm, err := usagev1.DecodeMessage(m.Subject, m.Data)
		if err != nil {
			t.Error(err)
			return
		}
		mu.Lock()
		sizes = append(sizes, len(dm.Events))
		seq := len(sizes)
		mu.Unlock()
		ack := []byte(`{"stream":"USAGE","seq":` + strconv.Itoa(seq) + `}`)
		if seq == 1 {
			go func() { <-release; _ = m.Respond(ack) }()
			return
		}
		_ = m.Respond(ack)
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = ackSub.Unsubscribe() })
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	arrived := func(n int) func() bool {
		return func() bool { mu.Lock(); defer mu.Unlock(); return len(sizes) >= n }
	}

	slow := make(chan error, 1)
	go func() { slow <- pub.Publish(t.Context(), event()) }()
	waitFor(t, 10*time.Second, arrived(1), "the first batch to reach the server")

	// Four calls fill the next batch, which is sealed and written while the
	// first is still unacknowledged.
	start := time.Now()
	fast := make(chan error, 4)
	for range 4 {
		go func() { fast <- pub.Publish(t.Context(), event()) }()
	}
	for range 4 {
		select {
		case err := <-fast:
			if err != nil {
				t.Fatalf("call of the acknowledged batch: %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("the calls of an acknowledged batch wait for the slow batch before it")
		}
	}
	fastWait := time.Since(start)
	select {
	case err := <-slow:
		t.Fatalf("the slow batch's call returned (%v) before its acknowledgement", err)
	default:
	}
	mu.Lock()
	got := append([]int(nil), sizes...)
	mu.Unlock()
	if len(got) != 2 || got[0] != 1 || got[1] != 4 {
		t.Fatalf("batch sizes %v, want [1 4]", got)
	}

	close(release)
	select {
	case err := <-slow:
		if err != nil {
			t.Fatalf("slow batch: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the slow batch's call never returned after its acknowledgement")
	}
	if spool.Size() != 0 {
		t.Fatal("a batch was spooled; both were acknowledged")
	}
	t.Logf("the acknowledged batch's 4 calls returned after %v while the batch before it waited", fastWait)
}
