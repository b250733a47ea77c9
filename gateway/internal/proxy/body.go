package proxy

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"mime"
	"mime/multipart"
	"net/http"
	"strings"
	"sync"

	"github.com/labstack/echo/v4"

	"github.com/mana/apigw/proto/wav"
)

// readJSONBody reads a small JSON body within limit.
func readJSONBody(c echo.Context, limit int64) ([]byte, error) {
	req := c.Request()
	if ct := req.Header.Get("Content-Type"); ct != "" {
		mt, _, err := mime.ParseMediaType(ct)
		if err != nil || (mt != "application/json" && !strings.HasSuffix(mt, "+json")) {
			return nil, errNotJSON
		}
	}
	if req.ContentLength > limit {
		return nil, errBodyTooLarge
	}
	body, err := io.ReadAll(http.MaxBytesReader(c.Response(), req.Body, limit))
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return nil, errBodyTooLarge
		}
		if errors.Is(err, errBodyTooSlow) {
			return nil, errBodyTooSlow
		}
		return nil, errBodyUnreadable
	}
	if len(body) == 0 {
		return nil, errEmptyJSON
	}
	return body, nil
}

func setBody(req *http.Request, body []byte) {
	req.Body = io.NopCloser(bytes.NewReader(body))
	req.ContentLength = int64(len(body))
	req.Header.Set("Content-Length", itoa(len(body)))
	req.Header.Del("Transfer-Encoding")
	req.TransferEncoding = nil
	req.GetBody = func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(body)), nil }
}

func itoa(n int) string {
	var b [20]byte
	i := len(b)
	if n == 0 {
		return "0"
	}
	for n > 0 {
		i--
		b[i] = byte('0' + n%10)
		n /= 10
	}
	return string(b[i:])
}

// uploadSlack is how many bytes an upload may carry beyond the audio its WAV
// header declares (multipart framing, other fields).
const uploadSlack = 64 << 10

// meteredBody streams an upload to the backend, refusing bytes beyond the
// request limit (413) or beyond what the WAV header declared (400): the
// credits held for the declared duration then cover all the audio sent.
type meteredBody struct {
	r      io.Reader
	src    io.ReadCloser // the client's body
	n, max int64
	mu     sync.Mutex
	err    error // the client's body could not be read (framing broken, connection lost)
	parts  *partScanner
	// reading is held through each read of src: the transport's read may
	// still be under way when the call ends and the rest is drained.
	reading sync.Mutex
}

func (m *meteredBody) Read(p []byte) (int, error) {
	m.reading.Lock()
	defer m.reading.Unlock()
	n, err := m.r.Read(p)
	m.n += int64(n)
	if m.parts != nil && !m.parts.done() {
		if serr := m.parts.feed(p[:n]); serr != nil {
			m.mu.Lock()
			m.err = serr
			m.mu.Unlock()
			// None of this read is passed on: the backend must not get a
			// body it could take for complete.
			return 0, serr
		}
	}
	if m.n > m.max {
		return n, errUploadOverDeclared
	}
	if err != nil && !errors.Is(err, io.EOF) {
		m.mu.Lock()
		m.err = err
		m.mu.Unlock()
	}
	return n, err
}

// readErr is the error that reading the client's body met, if any: the
// client's doing, not the backend's.
func (m *meteredBody) readErr() error {
	if m == nil {
		return nil
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.err
}

// Close leaves the client's body open, whatever the transport that calls it
// is done with: the client may still be sending — the upload was cut off,
// the backend failed or answered before reading all of it — and what it
// sends is drained after the answer (see lingering), so that it reads the
// answer instead of a reset. The server closes the body when the call ends.
func (m *meteredBody) Close() error { return nil }

// rest is the client's body past what was metered, to be drained; its reads
// wait for one the transport may still have under way.
func (m *meteredBody) rest() io.Reader {
	if m == nil {
		return http.NoBody
	}
	return lockedReader{&m.reading, m.src}
}

type lockedReader struct {
	mu *sync.Mutex
	r  io.Reader
}

func (l lockedReader) Read(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.r.Read(p)
}

// peekSize is how much of an upload is looked at to find the WAV header.
const peekSize = 64 << 10

// openAudioUpload checks an STT upload without buffering it: multipart with
// a `file` part whose WAV header is within the first 64 KiB. It returns the
// body to forward and the declared duration in whole seconds (rounded up).
func openAudioUpload(req *http.Request, limit int64) (*meteredBody, int64, error) {
	mt, params, err := mime.ParseMediaType(req.Header.Get("Content-Type"))
	if err != nil || mt != "multipart/form-data" {
		return nil, 0, errNotMultipart
	}
	boundary := params["boundary"]
	if boundary == "" {
		return nil, 0, errNoBoundary
	}
	if req.ContentLength > limit {
		return nil, 0, errBodyTooLarge
	}
	limited := http.MaxBytesReader(nil, req.Body, limit)
	br := bufio.NewReaderSize(limited, peekSize)
	peek, err := br.Peek(peekSize)
	if err != nil && !errors.Is(err, io.EOF) && !errors.Is(err, bufio.ErrBufferFull) {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return nil, 0, errBodyTooLarge
		}
		if errors.Is(err, errBodyTooSlow) {
			return nil, 0, errBodyTooSlow
		}
		return nil, 0, errUploadUnread
	}
	mr := multipart.NewReader(bytes.NewReader(peek), boundary)
	var part *multipart.Part
	for {
		p, err := mr.NextPart()
		if err != nil {
			return nil, 0, errNoFile
		}
		if p.FormName() == "file" {
			part = p
			break
		}
	}
	pr := bufio.NewReader(part)
	if _, err := pr.Peek(1); err != nil {
		return nil, 0, errEmptyFile
	}
	hdr, err := wav.ParseHeader(pr)
	switch {
	case errors.Is(err, wav.ErrNotWAV):
		return nil, 0, errNotWAV
	case errors.Is(err, wav.ErrUnsupported):
		return nil, 0, errAudioUnsupported.WithDetail(err.Error())
	case err != nil:
		return nil, 0, errAudioInvalid.WithDetail(err.Error())
	}
	// One file per call: a second one would be audio nobody priced.
	for {
		p, err := mr.NextPart()
		if err != nil {
			break // the end of the form, or of the 64 KiB looked at
		}
		if p.FormName() == "file" {
			return nil, 0, errSecondFile
		}
	}
	// The audio is at most what the body can carry after the header, and
	// at most the declared size unless that is left open: the hold covers
	// every frame a decoder can be made to read.
	audioBytes := int64(hdr.DataSize)
	if req.ContentLength > 0 {
		if carried := req.ContentLength - hdr.DataOffset; hdr.Open() || carried < audioBytes {
			audioBytes = carried
		}
	} else if hdr.Open() {
		return nil, 0, errOpenNeedsLength
	}
	return &meteredBody{r: br, src: req.Body, max: hdr.DataOffset + audioBytes + uploadSlack, parts: newPartScanner(boundary)},
		hdr.Seconds(audioBytes), nil
}
