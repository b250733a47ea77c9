package testenv

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"strings"
	"sync"
	"testing"
)

// PostgresCounter is a TCP proxy in front of a Postgres server that reads
// the frontend side of the wire protocol and counts the statements a
// separate process (a binary under test) executes through it: every simple
// Query and every Execute, each with the SQL text it ran. Put a binary's
// DATABASE_URL through URL, and ask Statements how many statements it sent.
// Safe for concurrent use.
type PostgresCounter struct {
	url string
	mu  sync.Mutex
	// texts counts the executed statements by their SQL text.
	texts map[string]int64
	total int64
}

// CountingPostgres starts a counting proxy for the server of dsn (a
// postgres:// URL with sslmode=disable: the proxy cannot read TLS). The
// proxy stops when the test ends.
func CountingPostgres(t testing.TB, dsn string) *PostgresCounter {
	t.Helper()
	u, err := url.Parse(dsn)
	if err != nil {
		t.Fatalf("counting postgres: %v", err)
	}
	if u.Query().Get("sslmode") != "disable" {
		t.Fatalf("counting postgres: %s: the proxy reads the protocol in clear; use sslmode=disable", u.Redacted())
	}
	upstream := u.Host
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("counting postgres: %v", err)
	}
	u.Host = l.Addr().String()
	c := &PostgresCounter{url: u.String(), texts: map[string]int64{}}
	var wg sync.WaitGroup
	var connMu sync.Mutex
	conns := map[net.Conn]struct{}{}
	track := func(cs ...net.Conn) bool {
		connMu.Lock()
		defer connMu.Unlock()
		if conns == nil {
			return false
		}
		for _, conn := range cs {
			conns[conn] = struct{}{}
		}
		return true
	}
	t.Cleanup(func() {
		_ = l.Close()
		connMu.Lock()
		for conn := range conns {
			_ = conn.Close()
		}
		conns = nil
		connMu.Unlock()
		wg.Wait()
	})
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			client, err := l.Accept()
			if err != nil {
				return
			}
			server, err := net.Dial("tcp", upstream)
			if err != nil {
				_ = client.Close()
				continue
			}
			if !track(client, server) {
				_ = client.Close()
				_ = server.Close()
				return
			}
			wg.Add(2)
			go func() {
				defer wg.Done()
				_, _ = io.Copy(client, server)
				_ = client.Close()
			}()
			go func() {
				defer wg.Done()
				if err := c.relay(server, client); !errors.Is(err, net.ErrClosed) && !errors.Is(err, io.EOF) {
					t.Logf("counting postgres: %v", err)
				}
				_ = server.Close()
			}()
		}
	}()
	return c
}

// URL is dsn with its host and port replaced by the proxy's.
func (c *PostgresCounter) URL() string { return c.url }

// Statements is the number of statements executed so far whose SQL text
// contains sub ("" counts all).
func (c *PostgresCounter) Statements(sub string) int64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	if sub == "" {
		return c.total
	}
	var n int64
	for text, k := range c.texts {
		if strings.Contains(text, sub) {
			n += k
		}
	}
	return n
}

func (c *PostgresCounter) count(text string) {
	c.mu.Lock()
	c.texts[text]++
	c.total++
	c.mu.Unlock()
}

// relay copies the client's messages to the server, counting Query and
// Execute messages, until either side fails or closes (the error says
// which). Prepared statements and portals are followed by name
// (Parse, then Bind), so an Execute counts under the SQL it runs.
func (c *PostgresCounter) relay(server io.Writer, client io.Reader) error {
	r := bufio.NewReaderSize(client, 64<<10)
	var hdr [5]byte
	// The startup phase has untyped messages: an SSL or GSS encryption
	// request (answered with one byte, which the other direction copies)
	// and then the startup message.
	for {
		if _, err := io.ReadFull(r, hdr[:4]); err != nil {
			return err
		}
		n := int(binary.BigEndian.Uint32(hdr[:4]))
		if n < 8 || n > 1<<20 {
			return fmt.Errorf("startup message of %d bytes", n)
		}
		body := make([]byte, n-4)
		if _, err := io.ReadFull(r, body); err != nil {
			return err
		}
		if _, err := server.Write(append(hdr[:4:4], body...)); err != nil {
			return err
		}
		code := binary.BigEndian.Uint32(body[:4])
		if code == 80877103 || code == 80877104 { // SSLRequest, GSSENCRequest
			continue
		}
		break
	}
	stmts := map[string]string{}   // prepared statement name → SQL
	portals := map[string]string{} // portal name → SQL
	for {
		if _, err := io.ReadFull(r, hdr[:]); err != nil {
			return err
		}
		n := int(binary.BigEndian.Uint32(hdr[1:]))
		if n < 4 {
			return fmt.Errorf("message %q of length %d", hdr[0], n)
		}
		body := make([]byte, n-4)
		if _, err := io.ReadFull(r, body); err != nil {
			return err
		}
		fields := strings.Split(string(body), "\x00")
		switch hdr[0] {
		case 'Q': // Query: the SQL
			c.count(fields[0])
		case 'P': // Parse: statement name, SQL, ...
			if len(fields) >= 2 {
				stmts[fields[0]] = fields[1]
			}
		case 'B': // Bind: portal name, statement name, ...
			if len(fields) >= 2 {
				portals[fields[0]] = stmts[fields[1]]
			}
		case 'E': // Execute: portal name, row limit
			c.count(portals[fields[0]])
		}
		if _, err := server.Write(append(hdr[:], body...)); err != nil {
			return err
		}
	}
}
