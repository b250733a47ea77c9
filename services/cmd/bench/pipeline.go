package main

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/oklog/ulid/v2"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	usagev1 "github.com/mana/apigw/proto/usage/v1"
	"github.com/mana/apigw/services/testenv/proc"
)

// drainResult is one consumer reading the stream to its end.
type drainResult struct {
	name    string
	events  int64   // messages settled during the measurement
	seconds float64 // wall time of the measurement
	cpu     float64 // CPU seconds of the consumer process (0 for in-process)
}

func (d drainResult) rate() float64 {
	if d.seconds <= 0 {
		return 0
	}
	return float64(d.events) / d.seconds
}

// pipelineResult is what the pipeline phase measured.
type pipelineResult struct {
	streamEvents  uint64 // on the stream for the rate measurements
	gatewayEvents uint64 // of which the gateway published during the HTTP phase
	billing       drainResult
	aggregator    drainResult
	bare          drainResult
	catchUp       drainResult // the aggregator over the events added for the replay
	replayEvents  uint64
	replaySeconds float64
	replayExit    int
	replayLine    string
	publishRate   float64 // synthetic events published per second (async, acknowledged)
	// One publish at a time, waiting for each acknowledgement: the floor
	// the durable event adds to a request (sync always, and without fsync).
	ackLatency, ackLatencyNoFsync latencies
}

// replay1M is the replay time extrapolated to one million events.
func (p pipelineResult) replay1M() float64 {
	if p.replayEvents == 0 {
		return 0
	}
	return p.replaySeconds * 1e6 / float64(p.replayEvents)
}

// pipelinePhase measures the billing worker, the aggregator and a bare
// JetStream consumer on the same stream, then times a full replay.
func (h *harness) pipelinePhase(ctx context.Context, res *results) error {
	nc, err := nats.Connect(h.cfg.NATSURL, nats.Name("bench"), nats.Timeout(5*time.Second))
	if err != nil {
		return fmt.Errorf("nats: %w", err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc, jetstream.WithPublishAsyncMaxPending(4096))
	if err != nil {
		return err
	}
	stream, err := usagev1.EnsureStream(ctx, js, 0)
	if err != nil {
		return err
	}
	p := &res.pipeline
	if p.ackLatency, err = ackLatency(ctx, h.cfg.NATSURL); err != nil {
		return err
	}
	if h.cfg.NATSNoFsyncURL != "" {
		if p.ackLatencyNoFsync, err = ackLatency(ctx, h.cfg.NATSNoFsyncURL); err != nil {
			return err
		}
	}
	info, err := stream.Info(ctx)
	if err != nil {
		return fmt.Errorf("stream info: %w", err)
	}
	p.gatewayEvents = info.State.Msgs
	if p.publishRate, err = fillStream(ctx, js, stream, uint64(h.cfg.PipelineEvents)); err != nil {
		return err
	}
	if info, err = stream.Info(ctx); err != nil {
		return fmt.Errorf("stream info: %w", err)
	}
	p.streamEvents = info.State.Msgs
	h.logger.Info("pipeline stream ready", "events", p.streamEvents, "from_gateway", p.gatewayEvents)

	if p.billing, err = h.drainWith(ctx, js, "billing-worker", usagev1.BillingConsumer); err != nil {
		return err
	}
	if p.aggregator, err = h.drainWith(ctx, js, "aggregator", usagev1.AggregatorConsumer); err != nil {
		return err
	}
	if p.bare, err = bareDrain(ctx, stream); err != nil {
		return err
	}
	for _, d := range []drainResult{p.billing, p.aggregator, p.bare} {
		h.logger.Info("pipeline", "consumer", d.name, "events", d.events, "seconds", d.seconds, "events_per_s", int(d.rate()))
	}

	// The replay compares with the live tables: the aggregator catches up
	// with the added events first, so a correct replay finds no difference.
	if uint64(h.cfg.ReplayEvents) > p.streamEvents {
		if _, err = fillStream(ctx, js, stream, uint64(h.cfg.ReplayEvents)); err != nil {
			return err
		}
		if p.catchUp, err = h.drainWith(ctx, js, "aggregator", usagev1.AggregatorConsumer); err != nil {
			return err
		}
	}
	if info, err = stream.Info(ctx); err != nil {
		return fmt.Errorf("stream info: %w", err)
	}
	p.replayEvents = info.State.Msgs
	return h.replay(ctx, p)
}

// fillStream publishes synthetic events until the stream holds want
// messages and returns the publish rate. They are what the gateway
// publishes (valid, one of 100 keys, this month) without Nats-Msg-Id, so
// the server keeps no million-entry duplicate table.
func fillStream(ctx context.Context, js jetstream.JetStream, stream jetstream.Stream, want uint64) (float64, error) {
	info, err := stream.Info(ctx)
	if err != nil {
		return 0, err
	}
	have := info.State.Msgs
	if have >= want {
		return 0, nil
	}
	keyIDs := make([]string, 100)
	for i := range keyIDs {
		keyIDs[i] = uuid4()
	}
	start := time.Now()
	n := want - have
	for i := uint64(0); i < n; i++ {
		if i%publishChunk == 0 && i > 0 {
			// A bounded window: wait for the chunk's acknowledgements
			// rather than stall the client's pending limit.
			if err := publishWait(ctx, js); err != nil {
				return 0, err
			}
		}
		now := time.Now().UTC()
		k := keyIDs[i%uint64(len(keyIDs))]
		ev := &usagev1.UsageEvent{
			EventId: ulid.Make().String(), RequestId: ulid.Make().String(), KeyId: k, OwnerId: "bench-owner-" + k[:8],
			Tier: "bench", Endpoint: "/v1/search", Status: 200, Credits: 1, Units: 1, Unit: "request",
			OccurredAt: timestamppb.New(now), LatencyUs: 900, Period: now.Format("2006-01"),
			MonthlyCredits: 1_000_000_000_000, GatewayId: "bench-synthetic",
		}
		data, err := proto.Marshal(ev)
		if err != nil {
			return 0, err
		}
		if _, err := js.PublishAsync(usagev1.Subject(k), data); err != nil {
			return 0, fmt.Errorf("publish synthetic event: %w", err)
		}
	}
	if err := publishWait(ctx, js); err != nil {
		return 0, err
	}
	rate := float64(n) / time.Since(start).Seconds()
	if info, err = stream.Info(ctx); err != nil {
		return 0, err
	}
	if info.State.Msgs < want {
		return 0, fmt.Errorf("stream holds %d events after publishing, want %d", info.State.Msgs, want)
	}
	return rate, nil
}

// ackLatency publishes 1,000 event-sized messages one at a time to a
// scratch file stream and returns the quantiles of the acknowledged publish.
func ackLatency(ctx context.Context, natsURL string) (latencies, error) {
	return ackLatencyReplicas(ctx, natsURL, 1)
}

// ackLatencyReplicas is ackLatency on a scratch stream of that many replicas.
func ackLatencyReplicas(ctx context.Context, natsURL string, replicas int) (latencies, error) {
	nc, err := nats.Connect(natsURL, nats.Name("bench-ack"), nats.Timeout(5*time.Second))
	if err != nil {
		return latencies{}, fmt.Errorf("nats: %w", err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return latencies{}, err
	}
	st, err := js.CreateOrUpdateStream(ctx, jetstream.StreamConfig{Name: "BENCH_ACK", Subjects: []string{"benchack.>"}, Storage: jetstream.FileStorage, Replicas: replicas})
	if err != nil {
		return latencies{}, fmt.Errorf("scratch stream: %w", err)
	}
	defer func() { _ = js.DeleteStream(context.WithoutCancel(ctx), st.CachedInfo().Config.Name) }()
	data := make([]byte, 220) // about a marshalled usage event
	lat := make([]time.Duration, 0, 1000)
	for i := 0; i < 1000; i++ {
		t0 := time.Now()
		if _, err := js.Publish(ctx, "benchack.x", data); err != nil {
			return latencies{}, fmt.Errorf("publish: %w", err)
		}
		lat = append(lat, time.Since(t0))
	}
	return quantiles(lat), nil
}

// publishChunk is how many synthetic events are in flight at most.
const publishChunk = 2000

func publishWait(ctx context.Context, js jetstream.JetStream) error {
	select {
	case <-js.PublishAsyncComplete():
		return nil
	case <-time.After(time.Minute):
		return errors.New("synthetic events not acknowledged within a minute")
	case <-ctx.Done():
		return ctx.Err()
	}
}

func uuid4() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16])
}

// drainWith starts a worker binary and measures its durable consumer from
// the moment it exists until nothing is pending or unacknowledged; then
// stops the worker.
func (h *harness) drainWith(ctx context.Context, js jetstream.JetStream, bin, durable string) (drainResult, error) {
	return h.drainWithURL(ctx, js, bin, durable, h.cfg.NATSURL)
}

// drainWithURL is drainWith on the stream of natsURL.
func (h *harness) drainWithURL(ctx context.Context, js jetstream.JetStream, bin, durable, natsURL string) (drainResult, error) {
	port, err := proc.FreePort()
	if err != nil {
		return drainResult{}, err
	}
	env := []string{"DATABASE_URL=" + h.dsn, "NATS_URL=" + natsURL, "METRICS_PORT=" + strconv.Itoa(port), "LOG_LEVEL=warn"}
	p, err := startProc(bin, h.cfg.WorkDir, h.bin(bin), env)
	if err != nil {
		return drainResult{}, err
	}
	defer p.Stop(30 * time.Second)
	res := drainResult{name: bin}
	var t0 time.Time
	var rem0 uint64
	var cpu0 float64
	deadline := time.Now().Add(15 * time.Minute)
	for {
		if exited(p) {
			return res, fmt.Errorf("%s exited:\n%s", bin, p.Tail(proc.TailSize))
		}
		if time.Now().After(deadline) {
			return res, fmt.Errorf("%s did not drain the stream in 15 minutes", bin)
		}
		c, err := js.Consumer(ctx, usagev1.StreamName, durable)
		if err == nil {
			info, err := c.Info(ctx)
			if err == nil {
				rem := info.NumPending + uint64(info.NumAckPending)
				if t0.IsZero() {
					t0, rem0, cpu0 = time.Now(), rem, groupCPU([]int{p.Pid()})
				}
				if rem == 0 {
					res.seconds = time.Since(t0).Seconds()
					res.events = int64(rem0)
					res.cpu = groupCPU([]int{p.Pid()}) - cpu0
					return res, nil
				}
			}
		} else if !errors.Is(err, jetstream.ErrConsumerNotFound) && ctx.Err() == nil {
			h.logger.Warn("consumer info", "consumer", durable, "err", err)
		}
		select {
		case <-ctx.Done():
			return res, ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// bareDrain reads the stream with a durable pull consumer configured like
// the workers' (explicit acks, batches of 500, 2000 unacknowledged at most):
// fetch, decode and validate (both forms: a UsageBatch or one event), ack.
// No database. It counts messages, as the worker drains do.
func bareDrain(ctx context.Context, stream jetstream.Stream) (drainResult, error) {
	res := drainResult{name: "bare JetStream consumer"}
	info, err := stream.Info(ctx)
	if err != nil {
		return res, err
	}
	total := info.State.Msgs
	cons, err := stream.CreateOrUpdateConsumer(ctx, jetstream.ConsumerConfig{
		Durable: "bench-bare", AckPolicy: jetstream.AckExplicitPolicy, DeliverPolicy: jetstream.DeliverAllPolicy,
		MaxAckPending: 2000, AckWait: 30 * time.Second, FilterSubject: usagev1.SubjectWildcard,
	})
	if err != nil {
		return res, fmt.Errorf("bare consumer: %w", err)
	}
	start := time.Now()
	var n uint64
	for n < total {
		batch, err := cons.Fetch(int(min(500, total-n)), jetstream.FetchMaxWait(2*time.Second))
		if err != nil {
			return res, fmt.Errorf("bare consumer fetch: %w", err)
		}
		for m := range batch.Messages() {
			if _, err := usagev1.DecodeMessage(m.Subject(), m.Data()); err != nil {
				return res, fmt.Errorf("bare consumer: stream message on %s: %w", m.Subject(), err)
			}
			if err := m.Ack(); err != nil {
				return res, fmt.Errorf("bare consumer ack: %w", err)
			}
			n++
		}
		if err := batch.Error(); err != nil && !errors.Is(err, nats.ErrTimeout) {
			return res, fmt.Errorf("bare consumer batch: %w", err)
		}
		if ctx.Err() != nil {
			return res, ctx.Err()
		}
	}
	// Settled like the workers: every ack has reached the server.
	for {
		ci, err := cons.Info(ctx)
		if err != nil {
			return res, err
		}
		if ci.NumAckPending == 0 {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	res.events, res.seconds = int64(n), time.Since(start).Seconds()
	_ = stream.DeleteConsumer(ctx, "bench-bare")
	return res, nil
}

var replayLineRE = regexp.MustCompile(`replay: \d+ events.*`)

// replay times `aggregator replay --from-start` over the whole stream.
func (h *harness) replay(ctx context.Context, p *pipelineResult) error {
	out := filepath.Join(h.cfg.WorkDir, "replay.out")
	stdout, err := os.Create(out)
	if err != nil {
		return err
	}
	defer stdout.Close()
	var stderr strings.Builder
	cmd := exec.CommandContext(ctx, h.bin("aggregator"), "replay", "--from-start")
	cmd.Env = append(os.Environ(), "DATABASE_URL="+h.dsn, "NATS_URL="+h.cfg.NATSURL, "LOG_LEVEL=warn", "METRICS_PORT=0")
	cmd.Stdout, cmd.Stderr = stdout, &stderr
	start := time.Now()
	err = cmd.Run()
	p.replaySeconds = time.Since(start).Seconds()
	var ee *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &ee):
		p.replayExit = ee.ExitCode()
	default:
		return fmt.Errorf("aggregator replay: %w", err)
	}
	p.replayLine = replayLineRE.FindString(stderr.String())
	if p.replayExit > 1 {
		return fmt.Errorf("aggregator replay failed (exit %d):\n%s", p.replayExit, stderr.String())
	}
	h.logger.Info("replay", "events", p.replayEvents, "seconds", p.replaySeconds, "exit", p.replayExit, "summary", p.replayLine)
	return nil
}
