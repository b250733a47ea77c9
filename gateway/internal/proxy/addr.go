package proxy

import (
	"net"
	"net/http"
	"net/netip"
)

// clientAddr is the address a request came from, for per-address limits:
// the TCP peer (never a header the client writes). An IPv6 peer counts by
// its /64, the smallest block a client is usually given.
func clientAddr(r *http.Request) string {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		host = r.RemoteAddr
	}
	ip, err := netip.ParseAddr(host)
	if err != nil {
		return host
	}
	if ip.Is6() && !ip.Is4In6() {
		p, _ := ip.Prefix(64)
		return p.String()
	}
	return ip.Unmap().String()
}
