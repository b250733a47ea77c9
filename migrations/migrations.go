// Package migrations owns the api_gateway schema: its SQL files, embedded, and
// the one function every binary calls at start to bring the schema up to date.
package migrations

import (
	"context"
	"database/sql"
	"embed"
	"fmt"
	"io/fs"
	"log/slog"

	"github.com/pressly/goose/v3"
	"github.com/pressly/goose/v3/lock"
)

//go:embed sql/*.sql
var files embed.FS

// Apply runs every pending migration. A Postgres session advisory lock
// serialises concurrent callers, so all binaries may call it at start.
func Apply(ctx context.Context, db *sql.DB, logger *slog.Logger) error {
	sub, err := fs.Sub(files, "sql")
	if err != nil {
		return fmt.Errorf("migrations: %w", err)
	}
	locker, err := lock.NewPostgresSessionLocker()
	if err != nil {
		return fmt.Errorf("migrations: locker: %w", err)
	}
	p, err := goose.NewProvider(goose.DialectPostgres, db, sub,
		goose.WithSessionLocker(locker),
		goose.WithTableName("api_gateway_goose_version"),
	)
	if err != nil {
		return fmt.Errorf("migrations: provider: %w", err)
	}
	res, err := p.Up(ctx)
	if err != nil {
		return fmt.Errorf("migrations: up: %w", err)
	}
	for _, r := range res {
		logger.InfoContext(ctx, "migration applied", "version", r.Source.Version, "path", r.Source.Path, "duration", r.Duration)
	}
	return nil
}
