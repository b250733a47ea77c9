package quota

import (
	"context"
	"fmt"
	"strconv"

	"github.com/redis/go-redis/v9"
)

// Snapshot is a key's enforced balance as Redis holds it, with what a
// correction must find unchanged.
type Snapshot struct {
	KeyID   string
	Period  string // empty: Redis has no balance for the key
	Balance int64
	last    string
	members int64
}

// Snapshots reads the balances of the keys, each atomically, in one
// pipelined round trip.
func (s *Store) Snapshots(ctx context.Context, keyIDs []string) ([]Snapshot, error) {
	pipe := s.rdb.Pipeline()
	cmds := make([]*redis.Cmd, len(keyIDs))
	for i, id := range keyIDs {
		cmds[i] = s.snapshot.EvalSha(ctx, pipe, []string{stateKey(id), rateKey(id)})
	}
	if _, err := pipe.Exec(ctx); err != nil && redis.HasErrorPrefix(err, "NOSCRIPT") {
		if err := s.snapshot.Load(ctx, s.rdb).Err(); err != nil {
			return nil, fmt.Errorf("quota: load snapshot script: %w", err)
		}
		return s.Snapshots(ctx, keyIDs)
	} else if err != nil {
		return nil, fmt.Errorf("quota: snapshot balances: %w", err)
	}
	out := make([]Snapshot, len(keyIDs))
	for i, c := range cmds {
		v, err := c.Slice()
		if err != nil || len(v) != 4 {
			return nil, fmt.Errorf("quota: snapshot of %s: %v %w", keyIDs[i], v, err)
		}
		sn := Snapshot{KeyID: keyIDs[i]}
		sn.Period, _ = v[0].(string)
		sn.last, _ = v[2].(string)
		sn.members, _ = v[3].(int64)
		if b, _ := v[1].(string); b != "" {
			if sn.Balance, err = strconv.ParseInt(b, 10, 64); err != nil {
				return nil, fmt.Errorf("quota: snapshot of %s: balance %q", keyIDs[i], b)
			}
		} else {
			sn.Period = ""
		}
		out[i] = sn
	}
	return out, nil
}

// Correct sets the key's balance to bal if nothing changed since the
// snapshot; ok is false when a call was admitted or settled meanwhile.
func (s *Store) Correct(ctx context.Context, sn Snapshot, bal int64) (ok bool, err error) {
	n, err := run(ctx, s.rdb, s.correct, []string{stateKey(sn.KeyID), rateKey(sn.KeyID)},
		sn.Period, strconv.FormatInt(sn.Balance, 10), sn.last, sn.members, bal).Int64()
	if err != nil {
		return false, fmt.Errorf("quota: correct balance of %s: %w", sn.KeyID, err)
	}
	return n == 1, nil
}
