package proxy

import (
	"bytes"
	"mime"
	"net/textproto"
	"strings"
)

// maxPartHeader bounds one part's header block in a streamed form.
const maxPartHeader = 16 << 10

// partScanner follows a multipart body as it streams to the backend and
// refuses a second `file` part anywhere in it: only the first 64 KiB are
// parsed before the call is priced, and a backend that keeps the last of
// two fields of one name (as Python's form parsers do) would transcribe
// audio nobody priced.
type partScanner struct {
	delim []byte // CRLF "--" boundary
	buf   []byte // the unscanned tail: a possible delimiter's start, or an incomplete header block
	files int
}

func newPartScanner(boundary string) *partScanner {
	// The first delimiter starts the body, without the CRLF of the others.
	return &partScanner{delim: []byte("\r\n--" + boundary), buf: []byte("\r\n")}
}

// feed scans the next bytes of the body.
func (s *partScanner) feed(p []byte) error {
	s.buf = append(s.buf, p...)
	for {
		i := bytes.Index(s.buf, s.delim)
		if i < 0 {
			// Keep what could be the start of a delimiter.
			if keep := len(s.delim) - 1; len(s.buf) > keep {
				s.buf = append(s.buf[:0], s.buf[len(s.buf)-keep:]...)
			}
			return nil
		}
		rest := s.buf[i+len(s.delim):]
		if len(rest) < 2 {
			s.buf = append(s.buf[:0], s.buf[i:]...)
			return nil
		}
		if bytes.HasPrefix(rest, []byte("--")) {
			// The close delimiter: nothing after it is a part.
			s.buf = s.buf[:0]
			s.delim = nil
			return nil
		}
		end := bytes.Index(rest, []byte("\r\n\r\n"))
		if end < 0 {
			if len(rest) > maxPartHeader {
				return errPartMalformed
			}
			s.buf = append(s.buf[:0], s.buf[i:]...)
			return nil
		}
		if partName(rest[:end]) == "file" {
			s.files++
			if s.files > 1 {
				return errSecondFile
			}
		}
		s.buf = append(s.buf[:0], rest[end+4:]...)
	}
}

// done reports whether the close delimiter was seen.
func (s *partScanner) done() bool { return s.delim == nil }

// partName is the form field name of a part's header block (after the
// delimiter's line break).
func partName(block []byte) string {
	for _, line := range strings.Split(string(block), "\r\n") {
		k, v, ok := strings.Cut(line, ":")
		if !ok || textproto.CanonicalMIMEHeaderKey(strings.TrimSpace(k)) != "Content-Disposition" {
			continue
		}
		if _, params, err := mime.ParseMediaType(strings.TrimSpace(v)); err == nil {
			return params["name"]
		}
	}
	return ""
}
