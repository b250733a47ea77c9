package app

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/protobuf/encoding/protojson"

	"github.com/mana/apigw/aggregator/internal/rollup"
	usagev1 "github.com/mana/apigw/proto/usage/v1"
)

// Exit codes of the binary.
const (
	ExitOK      = 0 // done; for replay: the live tables match (or were replaced with --apply)
	ExitDiffers = 1 // replay: the live tables differ from the stream
	ExitError   = 2 // bad usage, bad configuration or a failure
)

const usage = `usage:
  aggregator                  run the consumer (durable "aggregator")
  aggregator replay [--from-start | --from-seq N | --from-time RFC3339] [--apply] [--keep]
                              rebuild api_usage and api_usage_daily from the stream into a scratch
                              schema, print the rows that differ from the live tables;
                              exit 0 when they match, 1 when they differ, 2 on error
  aggregator tail [--from-start | --from-seq N | --from-time RFC3339] [--key KEY_ID] [--limit N]
                              print events as JSON, one per line (default: new events only)
settings (environment): DATABASE_URL, NATS_URL, METRICS_PORT, LOG_LEVEL
`

// Main runs the binary with its arguments (without the program name) and
// returns its exit code.
func Main(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) int {
	cfg, err := ConfigFromEnv(getenv)
	if err != nil {
		fmt.Fprintf(stderr, "aggregator: config: %v\n", err)
		return ExitError
	}
	logger := slog.New(slog.NewJSONHandler(stderr, &slog.HandlerOptions{Level: cfg.LogLevel}))
	if len(args) == 0 {
		if err := Run(ctx, cfg, logger); err != nil {
			fmt.Fprintf(stderr, "aggregator: %v\n", err)
			return ExitError
		}
		return ExitOK
	}
	switch args[0] {
	case "replay":
		return replayCmd(ctx, cfg, logger, args[1:], stdout, stderr)
	case "tail":
		return tailCmd(ctx, cfg, logger, args[1:], stdout, stderr)
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
		return ExitOK
	}
	fmt.Fprintf(stderr, "aggregator: unknown command %q\n%s", args[0], usage)
	return ExitError
}

// startFlags registers --from-start, --from-seq and --from-time.
type startFlags struct {
	fromStart bool
	fromSeq   uint64
	fromTime  string
}

func (s *startFlags) register(fs *flag.FlagSet) {
	fs.BoolVar(&s.fromStart, "from-start", false, "read the whole stream")
	fs.Uint64Var(&s.fromSeq, "from-seq", 0, "read from this stream sequence")
	fs.StringVar(&s.fromTime, "from-time", "", "read from this time (RFC 3339)")
}

// start resolves the flags; def applies when none is given.
func (s *startFlags) start(def jetstream.DeliverPolicy) (rollup.Start, error) {
	n := 0
	st := rollup.Start{Policy: def}
	if s.fromStart {
		n++
		st = rollup.Start{Policy: jetstream.DeliverAllPolicy}
	}
	if s.fromSeq > 0 {
		n++
		st = rollup.Start{Policy: jetstream.DeliverByStartSequencePolicy, Seq: s.fromSeq}
	}
	if s.fromTime != "" {
		n++
		t, err := time.Parse(time.RFC3339, s.fromTime)
		if err != nil {
			return st, fmt.Errorf("--from-time: %w", err)
		}
		st = rollup.Start{Policy: jetstream.DeliverByStartTimePolicy, Time: t}
	}
	if n > 1 {
		return st, errors.New("give at most one of --from-start, --from-seq, --from-time")
	}
	return st, nil
}

func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}

func replayCmd(ctx context.Context, cfg Config, logger *slog.Logger, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("replay", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var sf startFlags
	sf.register(fs)
	applyFlag := fs.Bool("apply", false, "replace the live aggregates by the replayed ones when they differ")
	keep := fs.Bool("keep", false, "keep the scratch schema")
	if err := fs.Parse(args); err != nil {
		return ExitError
	}
	st, err := sf.start(jetstream.DeliverAllPolicy)
	if err != nil {
		fmt.Fprintf(stderr, "aggregator replay: %v\n", err)
		return ExitError
	}
	c, err := connect(ctx, cfg.DatabaseURL, cfg.NATSURL, "aggregator-replay", logger)
	if err != nil {
		fmt.Fprintf(stderr, "aggregator replay: %v\n", err)
		return ExitError
	}
	defer c.close()
	rc := rollup.ReplayConfig{DB: c.db, JS: c.JS, Logger: logger, Start: st, Apply: *applyFlag, Keep: *keep, Out: stdout}
	if isTerminal(stderr) {
		rc.Progress = stderr
	}
	rep, err := rollup.Replay(ctx, rc)
	if err != nil {
		fmt.Fprintf(stderr, "aggregator replay: %v\n", err)
		return ExitError
	}
	scope := "all days"
	if rep.Days != nil {
		scope = fmt.Sprintf("%d day(s) touched by the window", len(rep.Days))
	}
	for _, sk := range rep.Skipped {
		fmt.Fprintf(stderr, "replay: skipped stream_seq=%d event_index=%d event_id=%q: %s\n", sk.StreamSeq, sk.Index, sk.EventID, sk.Reason)
	}
	if n := rep.Invalid + rep.InvalidEvents + rep.Rejected; n > len(rep.Skipped) {
		fmt.Fprintf(stderr, "replay: … and %d more skipped\n", n-len(rep.Skipped))
	}
	fmt.Fprintf(stderr, "replay: %d events in %d messages (skipped as the consumers dead-letter them: %d messages, %d invalid events, %d rejected by the database), compared %s: %d api_usage and %d api_usage_daily rows differ",
		rep.Events, rep.Messages, rep.Invalid, rep.InvalidEvents, rep.Rejected, scope, rep.UsageDiffs, rep.DailyDiffs)
	if *keep {
		fmt.Fprintf(stderr, "; scratch schema %s kept", rep.Schema)
	}
	fmt.Fprintln(stderr)
	switch {
	case rep.Applied:
		fmt.Fprintln(stderr, "replay: live tables replaced by the replayed ones")
		return ExitOK
	case rep.Differs():
		return ExitDiffers
	}
	return ExitOK
}

func tailCmd(ctx context.Context, cfg Config, logger *slog.Logger, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("tail", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var sf startFlags
	sf.register(fs)
	key := fs.String("key", "", "only this key's events")
	limit := fs.Int("limit", 0, "stop after this many events (0: never)")
	if err := fs.Parse(args); err != nil {
		return ExitError
	}
	st, err := sf.start(jetstream.DeliverNewPolicy)
	if err != nil {
		fmt.Fprintf(stderr, "aggregator tail: %v\n", err)
		return ExitError
	}
	if err := tail(ctx, cfg.NATSURL, st, *key, *limit, stdout, logger); err != nil {
		fmt.Fprintf(stderr, "aggregator tail: %v\n", err)
		return ExitError
	}
	return ExitOK
}

// tail prints events from st as protojson, one per line, until ctx ends or
// limit events were printed. It reads both forms of the stream and prints
// what the live consumers apply (rollup.DecodeChecked); what they
// dead-letter is logged, not printed. With key set only that key's events
// are printed (batches mix keys, so the filter is on the events).
func tail(ctx context.Context, natsURL string, st rollup.Start, key string, limit int, out io.Writer, logger *slog.Logger) error {
	nc, err := nats.Connect(natsURL, nats.Name("aggregator-tail"), nats.Timeout(5*time.Second))
	if err != nil {
		return fmt.Errorf("connect nats: %w", err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return fmt.Errorf("jetstream: %w", err)
	}
	if _, err := usagev1.EnsureStream(ctx, js, 0); err != nil {
		return err
	}
	oc := st.OrderedConfig()
	if key != "" {
		// The older form has a subject per key; batches are per gateway.
		oc.FilterSubjects = []string{usagev1.Subject(key), usagev1.BatchSubjectPrefix + ".>"}
	}
	rd, err := usagev1.NewReader(ctx, js, usagev1.ReaderConfig{Consumer: oc})
	if err != nil {
		return err
	}
	defer rd.Stop()
	enc := protojson.MarshalOptions{UseProtoNames: true}
	var skipped rollup.Report
	for n := 0; limit == 0 || n < limit; {
		msg, meta, err := rd.Next(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		for _, ev := range rollup.DecodeChecked(ctx, meta.Sequence.Stream, msg.Subject(), msg.Data(), &skipped, logger) {
			if key != "" && ev.Event.GetKeyId() != key {
				continue
			}
			line, err := enc.Marshal(ev.Event)
			if err != nil {
				return fmt.Errorf("encode event: %w", err)
			}
			if _, err := fmt.Fprintf(out, "%s\n", line); err != nil {
				return fmt.Errorf("write: %w", err)
			}
			if n++; limit > 0 && n >= limit {
				break
			}
		}
		skipped.Skipped = skipped.Skipped[:0]
	}
	return nil
}
