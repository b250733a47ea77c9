package server

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"time"

	"github.com/mana/apigw/gateway/internal/audit"
	"github.com/mana/apigw/gateway/internal/config"
)

// AuditVerify checks the audit trail's hash chain from its first row, as
// `gateway audit-verify` (make audit-verify) does, and writes the outcome
// to w; a broken chain is an error naming the first bad row.
func AuditVerify(ctx context.Context, cfg config.Config, logger *slog.Logger, w io.Writer) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Minute)
	defer cancel()
	db, err := OpenDB(ctx, cfg, logger)
	if err != nil {
		return err
	}
	defer db.Close()
	n, err := audit.Verify(ctx, db)
	if err != nil {
		return fmt.Errorf("%d rows verified, then: %w", n, err)
	}
	_, err = fmt.Fprintf(w, "audit trail intact: %d rows, each linked to the one before\n", n)
	return err
}
