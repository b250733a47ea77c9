package usagev1

import (
	"context"
	"fmt"
	"io"

	"github.com/nats-io/nats.go/jetstream"
)

// ReaderConfig says where a Reader starts, what it reads and where it stops.
type ReaderConfig struct {
	// Consumer configures the ordered consumer: where it starts
	// (DeliverPolicy with OptStartSeq or OptStartTime) and what it reads
	// (FilterSubjects; none means SubjectWildcard, both forms).
	Consumer jetstream.OrderedConsumerConfig
	// UpToLast stops the reader (io.EOF) after the message that was the
	// stream's last when the reader was made: what is published later is
	// not read. Without it the reader waits for new messages for ever.
	UpToLast bool
	// Buffer bounds the messages pulled ahead of Next; 0 is the client
	// library's default.
	Buffer int
}

// Reader reads the USAGE stream in stream order, one message at a time,
// with an ordered consumer: no state on the server, nothing to
// acknowledge. It is how the stream is read in a loop outside the durable
// consumers (the aggregator's replay and tail). A Reader is used from one
// goroutine.
type Reader struct {
	it      jetstream.MessagesContext
	last    uint64 // with UpToLast: the last sequence to read
	pending uint64
	done    bool
}

// NewReader starts reading the stream as cfg says. Stop releases it.
func NewReader(ctx context.Context, js jetstream.JetStream, cfg ReaderConfig) (*Reader, error) {
	stream, err := js.Stream(ctx, StreamName)
	if err != nil {
		return nil, fmt.Errorf("usage stream: %w", err)
	}
	r := &Reader{}
	empty := false
	if cfg.UpToLast {
		info, err := stream.Info(ctx)
		if err != nil {
			return nil, fmt.Errorf("usage stream info: %w", err)
		}
		r.last, empty = info.State.LastSeq, info.State.Msgs == 0
	}
	occ := cfg.Consumer
	if len(occ.FilterSubjects) == 0 {
		occ.FilterSubjects = []string{SubjectWildcard}
	}
	cons, err := stream.OrderedConsumer(ctx, occ)
	if err != nil {
		return nil, fmt.Errorf("usage stream: ordered consumer: %w", err)
	}
	cinfo, err := cons.Info(ctx)
	if err != nil {
		return nil, fmt.Errorf("usage stream: consumer info: %w", err)
	}
	r.pending = cinfo.NumPending
	if cfg.UpToLast && (r.pending == 0 || empty) {
		r.done = true
		return r, nil
	}
	var opts []jetstream.PullMessagesOpt
	if cfg.Buffer > 0 {
		opts = append(opts, jetstream.PullMaxMessages(cfg.Buffer))
	}
	if r.it, err = cons.Messages(opts...); err != nil {
		return nil, fmt.Errorf("usage stream: messages: %w", err)
	}
	return r, nil
}

// Pending is how many messages the reader had ahead of it when it was
// made (the consumer's count; a progress line's total).
func (r *Reader) Pending() uint64 { return r.pending }

// Next returns the next message and its metadata. A reader UpToLast
// returns io.EOF once it has returned its last message (at once when there
// was none); Next returns an error when ctx ends first.
func (r *Reader) Next(ctx context.Context) (jetstream.Msg, *jetstream.MsgMetadata, error) {
	if r.done {
		return nil, nil, io.EOF
	}
	msg, err := r.it.Next(jetstream.NextContext(ctx))
	if err != nil {
		return nil, nil, fmt.Errorf("read usage stream: %w", err)
	}
	meta, err := msg.Metadata()
	if err != nil {
		return nil, nil, fmt.Errorf("read usage stream: metadata: %w", err)
	}
	if r.last > 0 {
		if meta.Sequence.Stream > r.last {
			r.done = true // published after the reader was made
			return nil, nil, io.EOF
		}
		if meta.NumPending == 0 || meta.Sequence.Stream == r.last {
			r.done = true // this one is the last
		}
	}
	return msg, meta, nil
}

// Stop ends the reader's pull.
func (r *Reader) Stop() {
	if r.it != nil {
		r.it.Stop()
	}
}
