package app

import (
	"context"
	"testing"

	"github.com/jmoiron/sqlx"

	"github.com/mana/apigw/aggregator/internal/rollup"
	"github.com/mana/apigw/consumer/consumertest"
	"github.com/mana/apigw/services/testenv"
)

// TestStoreContract runs the contract of every consumer store against the
// usage tables', on a real database and stream.
func TestStoreContract(t *testing.T) {
	t.Parallel()
	consumertest.RunStoreContract(t, func(t *testing.T) consumertest.Target {
		u := testenv.StartUsageDB(t)
		db := sqlx.NewDb(u.DB, "postgres")
		return consumertest.Target{
			Store: batches{db: db, store: rollup.NewStore(rollup.LiveSchema)}, JS: u.JS,
			Held: func(ctx context.Context, eventID string) (int, error) {
				var n int
				err := db.GetContext(ctx, &n, `SELECT count(*) FROM api_gateway.api_usage WHERE event_id = $1`, eventID)
				return n, err
			},
			DeadLetters: consumertest.PostgresDeadLetters(u.DB),
		}
	})
}
