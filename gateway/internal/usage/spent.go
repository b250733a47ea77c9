package usage

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	usagev1 "github.com/mana/apigw/proto/usage/v1"
)

// StreamSpend sums what a key has been charged in a credit month according
// to the USAGE stream — which is ahead of the ledger by the events the
// billing worker has not processed yet. The quota store uses it when it
// rebuilds a key's balance after Redis lost it, so that events in flight
// are not granted again. Safe for concurrent use.
type StreamSpend struct {
	js      jetstream.JetStream
	timeout time.Duration
}

// NewStreamSpend reads from js; timeout bounds one scan.
func NewStreamSpend(js jetstream.JetStream, timeout time.Duration) *StreamSpend {
	return &StreamSpend{js: js, timeout: timeout}
}

// Spent returns the credits of the key's events of the period on the
// stream, and their event IDs.
func (s *StreamSpend) Spent(ctx context.Context, keyID, period string) (int64, map[string]bool, error) {
	start, err := time.Parse("2006-01", period)
	if err != nil {
		return 0, nil, fmt.Errorf("stream spend: period: %w", err)
	}
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	// Events are published after they occur, so none of this month's is
	// stored before the month began.
	cons, err := s.js.OrderedConsumer(ctx, usagev1.StreamName, jetstream.OrderedConsumerConfig{
		FilterSubjects: []string{usagev1.Subject(keyID), usagev1.BatchSubjectPrefix + ".>"},
		DeliverPolicy:  jetstream.DeliverByStartTimePolicy,
		OptStartTime:   &start,
	})
	if err != nil {
		return 0, nil, fmt.Errorf("stream spend: %w", err)
	}
	info, err := cons.Info(ctx)
	if err != nil {
		return 0, nil, fmt.Errorf("stream spend: %w", err)
	}
	remaining := int(info.NumPending)
	var sum int64
	seen := map[string]bool{}
	for remaining > 0 {
		batch, err := cons.Fetch(min(remaining, 1000), jetstream.FetchMaxWait(time.Second))
		if err != nil {
			return 0, nil, fmt.Errorf("stream spend: %w", err)
		}
		n := 0
		for m := range batch.Messages() {
			n++
			dm, err := usagev1.DecodeMessage(m.Subject(), m.Data())
			if err != nil {
				continue // dead-lettered by the consumers
			}
			for _, ev := range dm.Events {
				if ev.GetKeyId() != keyID || ev.GetPeriod() != period || seen[ev.GetEventId()] {
					continue // another key's, another month, or a duplicate
				}
				seen[ev.GetEventId()] = true
				sum += ev.GetCredits()
			}
		}
		if err := batch.Error(); err != nil && !errors.Is(err, jetstream.ErrNoMessages) {
			return 0, nil, fmt.Errorf("stream spend: %w", err)
		}
		if n == 0 {
			return 0, nil, errors.New("stream spend: the stream stopped delivering")
		}
		remaining -= n
	}
	return sum, seen, nil
}
