package search

import (
	"net/netip"
	"strings"
	"testing"
	"unicode/utf8"
)

func FuzzParseInetAton(f *testing.F) {
	for _, s := range []string{"127.0.0.1", "127.1", "0x7f.1", "2130706433", "0177.0.0.1", "1.2.3.4.5", "0x", "example.com", "10.1.65535"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		got, ok := parseInetAton(s)
		if !ok {
			return
		}
		if !got.Is4() {
			t.Fatalf("%q parsed to non-IPv4 %v", s, got)
		}
		// The canonical form parses to the same address both ways.
		again, ok := parseInetAton(got.String())
		if !ok || again != got {
			t.Fatalf("%q -> %v -> %v, %v", s, got, again, ok)
		}
		if std, err := netip.ParseAddr(s); err == nil && std != got {
			t.Fatalf("%q: netip says %v, we say %v", s, std, got)
		}
	})
}

func FuzzReadable(f *testing.F) {
	f.Add(`<html><head><title>T</title></head><body><article><p>a <b>b</b></p></article></body></html>`)
	f.Add(`<p>unclosed <div><script>x</script>`)
	f.Add("\xff\xfe<html>")
	f.Fuzz(func(t *testing.T, in string) {
		title, content, err := readable(strings.NewReader(in))
		if err != nil {
			return
		}
		if strings.Contains(title, "  ") || strings.Contains(content, "   ") {
			t.Fatalf("whitespace not collapsed: %q / %q", title, content)
		}
		if utf8.ValidString(in) && (!utf8.ValidString(title) || !utf8.ValidString(content)) {
			t.Fatalf("invalid UTF-8 out of valid input")
		}
	})
}
