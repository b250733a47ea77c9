package search

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"syscall"
)

// ErrForbiddenDestination is returned when an extract URL, a redirect or a
// resolved address points somewhere the extractor must not go: a private,
// loopback, link-local, shared (CGNAT), unique-local, multicast, reserved or
// IPv4-mapped address, or a scheme other than http and https.
var ErrForbiddenDestination = errors.New("forbidden destination")

// blockedPrefixes are ranges that are not public unicast even though
// netip.Addr.IsGlobalUnicast may say they are.
func blockedPrefixes() []netip.Prefix {
	return []netip.Prefix{
		netip.MustParsePrefix("0.0.0.0/8"),       // "this network"
		netip.MustParsePrefix("10.0.0.0/8"),      // private
		netip.MustParsePrefix("100.64.0.0/10"),   // shared address space (CGNAT)
		netip.MustParsePrefix("127.0.0.0/8"),     // loopback
		netip.MustParsePrefix("169.254.0.0/16"),  // link-local, cloud metadata
		netip.MustParsePrefix("172.16.0.0/12"),   // private
		netip.MustParsePrefix("192.0.0.0/24"),    // IETF protocol assignments
		netip.MustParsePrefix("192.0.2.0/24"),    // TEST-NET-1
		netip.MustParsePrefix("192.88.99.0/24"),  // 6to4 relay anycast
		netip.MustParsePrefix("192.168.0.0/16"),  // private
		netip.MustParsePrefix("198.18.0.0/15"),   // benchmarking
		netip.MustParsePrefix("198.51.100.0/24"), // TEST-NET-2
		netip.MustParsePrefix("203.0.113.0/24"),  // TEST-NET-3
		netip.MustParsePrefix("224.0.0.0/4"),     // multicast
		netip.MustParsePrefix("240.0.0.0/4"),     // reserved, broadcast
		netip.MustParsePrefix("::/128"),          // unspecified
		netip.MustParsePrefix("::1/128"),         // loopback
		netip.MustParsePrefix("::/96"),           // IPv4-compatible (deprecated)
		netip.MustParsePrefix("::ffff:0:0/96"),   // IPv4-mapped
		netip.MustParsePrefix("64:ff9b::/96"),    // NAT64: could reach any IPv4 address
		netip.MustParsePrefix("64:ff9b:1::/48"),  // local-use NAT64
		netip.MustParsePrefix("100::/64"),        // discard-only
		netip.MustParsePrefix("2001::/23"),       // IETF protocol assignments (Teredo, ORCHID, ...)
		netip.MustParsePrefix("2001:db8::/32"),   // documentation
		netip.MustParsePrefix("2002::/16"),       // 6to4: embeds an IPv4 address
		netip.MustParsePrefix("fc00::/7"),        // unique local
		netip.MustParsePrefix("fe80::/10"),       // link-local
		netip.MustParsePrefix("fec0::/10"),       // site-local (deprecated)
		netip.MustParsePrefix("ff00::/8"),        // multicast
	}
}

// addrPolicy decides which resolved addresses the extractor may connect to.
type addrPolicy struct {
	blocked []netip.Prefix
}

func newAddrPolicy() addrPolicy { return addrPolicy{blocked: blockedPrefixes()} }

// check returns nil when ip is a public unicast address.
func (p addrPolicy) check(ip netip.Addr) error {
	if !ip.IsValid() {
		return fmt.Errorf("%w: invalid address", ErrForbiddenDestination)
	}
	if ip.Zone() != "" {
		return fmt.Errorf("%w: scoped address %s", ErrForbiddenDestination, ip)
	}
	// IPv4-mapped addresses are refused outright (they are in the blocked
	// list); never unmap first, or ::ffff:127.0.0.1 would be judged as an
	// IPv4 address by a path that may not see it that way.
	if !ip.IsGlobalUnicast() || ip.IsPrivate() {
		return fmt.Errorf("%w: %s is not a public address", ErrForbiddenDestination, ip)
	}
	for _, pfx := range p.blocked {
		if pfx.Contains(ip) {
			return fmt.Errorf("%w: %s is in %s", ErrForbiddenDestination, ip, pfx)
		}
	}
	return nil
}

// control is a net.Dialer.Control function: it runs after the address is
// resolved and before connect(2), so every connection attempt - first
// request, redirect or re-resolved name - passes through it.
func (p addrPolicy) control(network, address string, _ syscall.RawConn) error {
	switch network {
	case "tcp", "tcp4", "tcp6":
	default:
		return fmt.Errorf("%w: network %s", ErrForbiddenDestination, network)
	}
	ap, err := netip.ParseAddrPort(address)
	if err != nil {
		return fmt.Errorf("%w: unparsable address %q", ErrForbiddenDestination, address)
	}
	return p.check(ap.Addr())
}

// checkHostLiteral refuses, before any DNS lookup, host names that the C
// library (and so other tools in the chain) would read as IPv4 addresses in
// a non-canonical form: 127.1, 0x7f.1, 2130706433, 0177.0.0.1. Go's resolver
// would send them to DNS instead, which is harmless, but the intent of such a
// URL is never a public name. Canonical literals are checked by the policy.
func (p addrPolicy) checkHostLiteral(host string) error {
	h := strings.TrimSuffix(strings.ToLower(host), ".")
	if h == "" {
		return fmt.Errorf("%w: empty host", ErrForbiddenDestination)
	}
	if ip, err := netip.ParseAddr(strings.Trim(h, "[]")); err == nil {
		return p.check(ip)
	}
	if ip, ok := parseInetAton(h); ok {
		if err := p.check(ip); err != nil {
			return err
		}
		return fmt.Errorf("%w: non-canonical IPv4 literal %q", ErrForbiddenDestination, host)
	}
	if h == "localhost" || strings.HasSuffix(h, ".localhost") {
		return fmt.Errorf("%w: %s", ErrForbiddenDestination, host)
	}
	return nil
}

// parseInetAton parses the forms inet_aton(3) accepts: one to four parts,
// each decimal, octal (leading 0) or hex (leading 0x), the last part filling
// the remaining bytes.
func parseInetAton(s string) (netip.Addr, bool) {
	parts := strings.Split(s, ".")
	if len(parts) > 4 {
		return netip.Addr{}, false
	}
	vals := make([]uint64, len(parts))
	for i, part := range parts {
		base := 10
		digits := part
		switch {
		case strings.HasPrefix(part, "0x"):
			base, digits = 16, part[2:]
		case len(part) > 1 && part[0] == '0':
			base, digits = 8, part[1:]
		}
		if digits == "" {
			return netip.Addr{}, false
		}
		v, err := strconv.ParseUint(digits, base, 32)
		if err != nil {
			return netip.Addr{}, false
		}
		vals[i] = v
	}
	var n uint64
	last := len(vals) - 1
	for i, v := range vals[:last] {
		if v > 0xff {
			return netip.Addr{}, false
		}
		n |= v << (8 * (3 - i))
	}
	if vals[last] >= 1<<(8*(4-last)) {
		return netip.Addr{}, false
	}
	n |= vals[last]
	return netip.AddrFrom4([4]byte{byte(n >> 24), byte(n >> 16), byte(n >> 8), byte(n)}), true
}

// hostPort is the host:port a URL dials, lower-cased, with the scheme's
// default port filled in.
func hostPort(scheme, host string) string {
	h, port, err := net.SplitHostPort(host)
	if err != nil {
		h = strings.Trim(host, "[]")
		port = map[string]string{"http": "80", "https": "443"}[scheme]
	}
	return net.JoinHostPort(strings.ToLower(h), port)
}
