package testenv

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"sync/atomic"
	"testing"

	"github.com/lib/pq"
)

// CountingDB opens dsn through a connector that counts every statement sent
// to Postgres (queries, execs, prepares and transaction starts), so a test
// can assert how many statements a code path costs.
func CountingDB(t testing.TB, dsn string) (*sql.DB, *atomic.Int64) {
	t.Helper()
	c, err := pq.NewConnector(dsn)
	if err != nil {
		t.Fatalf("pq connector: %v", err)
	}
	n := &atomic.Int64{}
	db := sql.OpenDB(&countingConnector{c: c, n: n})
	t.Cleanup(func() { _ = db.Close() })
	return db, n
}

type countingConnector struct {
	c driver.Connector
	n *atomic.Int64
}

func (cc *countingConnector) Connect(ctx context.Context) (driver.Conn, error) {
	conn, err := cc.c.Connect(ctx)
	if err != nil {
		return nil, err
	}
	return &countingConn{Conn: conn, n: cc.n}, nil
}

func (cc *countingConnector) Driver() driver.Driver { return cc.c.Driver() }

type countingConn struct {
	driver.Conn
	n *atomic.Int64
}

func (c *countingConn) Prepare(q string) (driver.Stmt, error) {
	c.n.Add(1)
	return c.Conn.Prepare(q)
}

func (c *countingConn) QueryContext(ctx context.Context, q string, args []driver.NamedValue) (driver.Rows, error) {
	c.n.Add(1)
	return c.Conn.(driver.QueryerContext).QueryContext(ctx, q, args)
}

func (c *countingConn) ExecContext(ctx context.Context, q string, args []driver.NamedValue) (driver.Result, error) {
	c.n.Add(1)
	return c.Conn.(driver.ExecerContext).ExecContext(ctx, q, args)
}

func (c *countingConn) BeginTx(ctx context.Context, opts driver.TxOptions) (driver.Tx, error) {
	c.n.Add(1)
	return c.Conn.(driver.ConnBeginTx).BeginTx(ctx, opts)
}

func (c *countingConn) Ping(ctx context.Context) error {
	return c.Conn.(driver.Pinger).Ping(ctx)
}
