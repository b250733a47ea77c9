package proxy

import (
	"bytes"
	"errors"
	"io"
	"mime/multipart"
	"net/http"
	"strings"
	"testing"
)

// FuzzOpenAudioUpload feeds arbitrary forms to the STT upload check: it
// never panics, an accepted upload holds a non-negative duration, and its
// metered body reads to an end (EOF or a refusal), never past the limit.
func FuzzOpenAudioUpload(f *testing.F) {
	const boundary = "fuzzboundary"
	seed := func(parts ...[]byte) []byte {
		var b bytes.Buffer
		mw := multipart.NewWriter(&b)
		_ = mw.SetBoundary(boundary)
		for _, p := range parts {
			w, _ := mw.CreateFormFile("file", "a.wav")
			_, _ = w.Write(p)
		}
		_ = mw.Close()
		return b.Bytes()
	}
	wav := []byte("RIFF\xff\xff\xff\xffWAVEfmt \x10\x00\x00\x00\x01\x00\x01\x00\x40\x1f\x00\x00\x40\x1f\x00\x00\x01\x00\x08\x00data\x40\x1f\x00\x00")
	f.Add(seed(append(bytes.Clone(wav), bytes.Repeat([]byte{128}, 8000)...)), int64(-1))
	f.Add(seed(wav, wav), int64(0))
	f.Add(seed([]byte("not a wav")), int64(10))
	f.Fuzz(func(t *testing.T, body []byte, contentLength int64) {
		req, _ := http.NewRequest(http.MethodPost, "/v1/stt/transcribe", bytes.NewReader(body))
		req.Header.Set("Content-Type", "multipart/form-data; boundary="+boundary)
		req.ContentLength = contentLength
		if contentLength < 0 || contentLength > int64(len(body)) {
			req.ContentLength = int64(len(body))
		}
		mb, seconds, err := openAudioUpload(req, 1<<20)
		if err != nil {
			return
		}
		if seconds < 0 {
			t.Fatalf("accepted with %d seconds", seconds)
		}
		n, err := io.Copy(io.Discard, mb)
		if n > 1<<20 {
			t.Fatalf("read %d bytes past the limit", n)
		}
		if err != nil && !errors.Is(err, errUploadOverDeclared) && !errors.Is(err, errSecondFile) && !errors.Is(err, errPartMalformed) {
			t.Fatalf("reading an accepted upload: %v", err)
		}
	})
}

// FuzzPartScanner: whether a second `file` part is found does not depend on
// how the body is cut into reads.
func FuzzPartScanner(f *testing.F) {
	f.Add([]byte("--b\r\nContent-Disposition: form-data; name=\"file\"\r\n\r\nx\r\n--b\r\nContent-Disposition: form-data; name=\"file\"\r\n\r\ny\r\n--b--\r\n"), uint16(3))
	f.Add([]byte("--b\r\nContent-Disposition: form-data; name=\"file\"\r\n\r\nx\r\n--b--\r\n"), uint16(1))
	f.Fuzz(func(t *testing.T, body []byte, step uint16) {
		whole := newPartScanner("b").feed(body)
		s := newPartScanner("b")
		var cut error
		k := int(step%64) + 1
		for i := 0; i < len(body) && cut == nil; i += k {
			cut = s.feed(body[i:min(i+k, len(body))])
		}
		if !errors.Is(cut, whole) && !(cut != nil && whole != nil && strings.Contains(cut.Error(), "form")) {
			t.Fatalf("whole body: %v; in reads of %d bytes: %v", whole, k, cut)
		}
	})
}
