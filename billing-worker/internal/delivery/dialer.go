package delivery

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"syscall"
	"time"
)

// ErrBlockedAddress is returned when a webhook URL resolves to an address
// the worker must not connect to.
var ErrBlockedAddress = errors.New("webhook address not allowed")

// blockedPrefixes are the ranges an owner's URL must never reach: this
// host, the private networks, link-local (cloud metadata at
// 169.254.169.254 and fd00:ec2::254 among them), carrier-grade NAT, and the
// reserved and documentation ranges.
var blockedPrefixes = func() []netip.Prefix {
	var out []netip.Prefix
	for _, s := range []string{
		"0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16", "172.16.0.0/12",
		"192.0.0.0/24", "192.0.2.0/24", "192.88.99.0/24", "192.168.0.0/16", "198.18.0.0/15", "198.51.100.0/24",
		"203.0.113.0/24", "224.0.0.0/4", "240.0.0.0/4",
		"::/128", "::1/128", "64:ff9b::/96", "64:ff9b:1::/48", "100::/64", "2001::/23", "2001:db8::/32",
		"fc00::/7", "fe80::/10", "fec0::/10", "ff00::/8",
		// IPv4 inside IPv6: IPv4-compatible (::a.b.c.d), SIIT
		// (::ffff:0:a.b.c.d) and 6to4, which may carry a private IPv4.
		"::/96", "::ffff:0:0:0/96", "2002::/16",
	} {
		out = append(out, netip.MustParsePrefix(s))
	}
	return out
}()

// Blocked tells whether ip is an address a webhook must not be sent to.
func Blocked(ip netip.Addr) bool {
	ip = ip.Unmap()
	if !ip.IsValid() || ip.IsLoopback() || ip.IsPrivate() || ip.IsLinkLocalUnicast() || ip.IsLinkLocalMulticast() ||
		ip.IsMulticast() || ip.IsUnspecified() || ip.IsInterfaceLocalMulticast() {
		return true
	}
	for _, p := range blockedPrefixes {
		if p.Contains(ip) {
			return true
		}
	}
	return false
}

// AllowList is WEBHOOK_ALLOW_HOSTS: host names or IP addresses (any port)
// that may be dialled even though they are not public, for development.
type AllowList map[string]bool

// ParseAllowList reads a comma-separated list of hosts.
func ParseAllowList(s string) (AllowList, error) {
	out := AllowList{}
	for _, h := range strings.Split(s, ",") {
		h = strings.ToLower(strings.TrimSpace(h))
		if h == "" {
			continue
		}
		if strings.ContainsAny(h, "/:@ ") && !isIP(h) {
			return nil, fmt.Errorf("WEBHOOK_ALLOW_HOSTS: %q is not a host name or IP address (no ports, schemes or paths)", h)
		}
		out[strings.Trim(h, "[]")] = true
	}
	return out, nil
}

func isIP(s string) bool {
	_, err := netip.ParseAddr(strings.Trim(s, "[]"))
	return err == nil
}

// dialer connects only to public addresses, except for allow-listed hosts.
// The check is on the address actually dialled (after resolution, in the
// socket's Control hook), so a name that resolves to a private address, or
// one whose DNS answer changes between a check and the connect, is refused.
// Every redirect dials again through it.
type dialer struct {
	allow         AllowList
	public, plain net.Dialer
}

func newDialer(allow AllowList, timeout time.Duration) *dialer {
	return &dialer{
		allow:  allow,
		public: net.Dialer{Timeout: timeout, KeepAlive: 30 * time.Second, Control: publicOnly},
		plain:  net.Dialer{Timeout: timeout, KeepAlive: 30 * time.Second},
	}
}

// DialContext dials addr (host:port of the URL).
func (d *dialer) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, err
	}
	if d.allow[strings.ToLower(host)] {
		return d.plain.DialContext(ctx, network, addr)
	}
	return d.public.DialContext(ctx, network, addr)
}

// publicOnly is the socket's Control hook: address is the resolved IP.
func publicOnly(_, address string, _ syscall.RawConn) error {
	ap, err := netip.ParseAddrPort(address)
	if err != nil {
		return fmt.Errorf("%w: %s", ErrBlockedAddress, address)
	}
	if Blocked(ap.Addr()) {
		return fmt.Errorf("%w: %s is not a public address", ErrBlockedAddress, ap.Addr())
	}
	return nil
}
