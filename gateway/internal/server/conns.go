package server

import (
	"fmt"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/mana/apigw/gateway/internal/problem"
)

// addrLimitListener caps the open connections per client address (the TCP
// peer; an IPv6 peer counts by its /64), so that one client cannot hold
// every file descriptor and goroutine of the gateway with idle or slow
// connections. netutil.LimitListener caps them in all, which would let
// that one client lock everybody out. A connection over the cap is told
// 429 and closed at once.
type addrLimitListener struct {
	net.Listener
	perAddr int
	mu      sync.Mutex
	open    map[netip.Addr]int
}

// limitPerAddress wraps l; perAddr <= 0 leaves it unlimited.
func limitPerAddress(l net.Listener, perAddr int) net.Listener {
	if perAddr <= 0 {
		return l
	}
	return &addrLimitListener{Listener: l, perAddr: perAddr, open: map[netip.Addr]int{}}
}

// tooManyConns is written to a connection over the cap before it is closed.
const tooManyConns = `{"type":"about:blank","title":"Too Many Requests","status":429,"detail":"too many open connections from this address; reuse or close one"}`

func (l *addrLimitListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		addr := peerAddr(c)
		l.mu.Lock()
		n := l.open[addr]
		if n < l.perAddr {
			l.open[addr] = n + 1
		}
		l.mu.Unlock()
		if n < l.perAddr {
			return &countedConn{Conn: c, release: func() { l.release(addr) }}, nil
		}
		go refuse(c)
	}
}

// refuse answers a connection over the cap without reading its request:
// the answer is written, and what the client sent meanwhile is dropped for
// a moment so that the close does not reset the connection under the answer.
func refuse(c net.Conn) {
	_ = c.SetDeadline(time.Now().Add(time.Second))
	_, _ = fmt.Fprintf(c, "HTTP/1.1 429 Too Many Requests\r\nContent-Type: %s\r\nRetry-After: 1\r\nConnection: close\r\nContent-Length: %d\r\n\r\n%s",
		problem.ContentType, len(tooManyConns), tooManyConns)
	if tc, ok := c.(*net.TCPConn); ok {
		_ = tc.CloseWrite()
	}
	var buf [4 << 10]byte
	for {
		if _, err := c.Read(buf[:]); err != nil {
			break
		}
	}
	_ = c.Close()
}

func (l *addrLimitListener) release(addr netip.Addr) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.open[addr] <= 1 {
		delete(l.open, addr)
		return
	}
	l.open[addr]--
}

func peerAddr(c net.Conn) netip.Addr {
	ap, err := netip.ParseAddrPort(c.RemoteAddr().String())
	if err != nil {
		return netip.Addr{}
	}
	ip := ap.Addr().Unmap()
	if ip.Is6() {
		p, _ := ip.Prefix(64)
		return p.Addr()
	}
	return ip
}

// countedConn gives its slot back once, when it is closed.
type countedConn struct {
	net.Conn
	once    sync.Once
	release func()
}

func (c *countedConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(c.release)
	return err
}
