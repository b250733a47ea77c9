package proxy

import (
	"bytes"
	"errors"
	"mime/multipart"
	"testing"
)

// TestPartScanner: the scanner finds a second `file` part wherever the
// body is cut into reads (here: every size from 1 byte up), and lets a
// form with one file and other fields through.
func TestPartScanner(t *testing.T) {
	build := func(fields ...string) (string, []byte) {
		var b bytes.Buffer
		mw := multipart.NewWriter(&b)
		for _, f := range fields {
			w, _ := mw.CreateFormFile(f, "a.wav")
			_, _ = w.Write(bytes.Repeat([]byte("RIFF\r\n--x"), 300))
		}
		_ = mw.Close()
		return mw.Boundary(), b.Bytes()
	}
	for _, tc := range []struct {
		name   string
		fields []string
		want   error
	}{
		{"one file", []string{"language", "file", "model"}, nil},
		{"two files", []string{"file", "language", "file"}, errSecondFile},
	} {
		t.Run(tc.name, func(t *testing.T) {
			boundary, body := build(tc.fields...)
			for step := 1; step <= 700; step += 37 {
				s := newPartScanner(boundary)
				var err error
				for i := 0; i < len(body) && err == nil; i += step {
					err = s.feed(body[i:min(i+step, len(body))])
				}
				if !errors.Is(err, tc.want) {
					t.Fatalf("reads of %d bytes: %v, want %v", step, err, tc.want)
				}
				if tc.want == nil && !s.done() {
					t.Fatalf("reads of %d bytes: the close delimiter was not seen", step)
				}
			}
		})
	}
}
