package proxy_test

import (
	"context"
	"encoding/json"
	"math"
	"net/http"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mana/apigw/gateway/internal/keys"
	"github.com/mana/apigw/services/stt"
	"github.com/mana/apigw/services/testenv"
)

// TestTheHoldBoundsWhatTheBackendProcesses: while an upload is at the
// backend, the credits held for it cover every second the STT stand-in —
// which reads the audio with a WAV reader of its own — transcribes from it,
// whatever the header claims; and the charge never exceeds the hold.
func TestTheHoldBoundsWhatTheBackendProcesses(t *testing.T) {
	logger := testenv.Logger(t)
	// seen is the key's balance as the backend starts on a call: the
	// balance before it minus the hold.
	var seen atomic.Int64
	var probe atomic.Pointer[func() (int64, error)]
	sttURL, _ := standIn(t, func() (http.Handler, error) {
		h, err := stt.New(stt.Config{}, logger)
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.Method == http.MethodPost {
				if p := probe.Load(); p != nil {
					if b, err := (*p)(); err == nil {
						seen.Store(b)
					}
				}
			}
			h.ServeHTTP(w, r)
		}), err
	})
	b := realBackends(t)
	ev := newEnv(t, b.search, sttURL, b.tts, withTimeoutCap(time.Minute))
	secret, k := ev.key("pro")
	if resp, body := ev.do("GET", "/v1/key", secret, "", ""); resp.StatusCode != 200 {
		t.Fatalf("%d %s", resp.StatusCode, body)
	}
	read := func(k *keys.Key) func() (int64, error) {
		return func() (int64, error) {
			v, _, err := ev.q.Balance(context.Background(), k.ID, time.Now().UTC().Format("2006-01"))
			return v, err
		}
	}(k)
	probe.Store(&read)

	const lie = 0xFFFFFFFF
	for _, tc := range []struct {
		name string
		file []byte
	}{
		{"float32, 3 min, byte rate 0xFFFFFFFF", wavFile(3, 1, 16000, lie, 4, 32, 180*64000, 180*64000, nil)},
		{"extensible float32 stereo, 1 min, byte rate 1", wavFile(0xFFFE, 2, 16000, 1, 8, 32, 60*128000, 60*128000, extensibleFloat(32))},
		{"µ-law, 2 min, byte rate 1", wavFile(7, 1, 8000, 1, 1, 8, 120*8000, 120*8000, nil)},
		{"PCM, 10 s, size 0", wavFile(1, 1, 16000, 32000, 2, 16, 0, 10*32000, nil)},
		{"PCM, 10 s, size 0x7FFFFFFF", wavFile(1, 1, 16000, 32000, 2, 16, 0x7FFFFFFF, 10*32000, nil)},
		{"PCM, 10 s, size 0xFFFFFFFF", wavFile(1, 1, 16000, 32000, 2, 16, 0xFFFFFFFF, 10*32000, nil)},
		{"PCM declaring 60 s, carrying 10 s", wavFile(1, 1, 16000, 32000, 2, 16, 60*32000, 10*32000, nil)},
		{"PCM declaring 4 bytes, carrying 1 s more", wavFile(1, 1, 16000, lie, 2, 16, 4, 4+32000, nil)},
		{"8-bit PCM, 1 byte, byte rate 0xFFFFFFFF", wavFile(1, 1, 16000, lie, 1, 8, 1, 1, nil)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := ev.balance(k)
			ct, body := form(t, tc.file)
			resp, out := ev.do("POST", "/v1/stt/transcribe", secret, ct, string(body))
			if resp.StatusCode != 200 {
				t.Fatalf("%d %s", resp.StatusCode, out)
			}
			var got struct {
				DurationSeconds float64 `json:"durationSeconds"`
			}
			if err := json.Unmarshal(out, &got); err != nil {
				t.Fatalf("%s: %v", out, err)
			}
			held, charged := before-seen.Load(), before-ev.balance(k)
			// 10 credits a minute, any part of a unit a whole one.
			processed := int64(math.Ceil(got.DurationSeconds * 10 / 60))
			t.Logf("backend transcribed %.3f s (%d credits); held %d, charged %d", got.DurationSeconds, processed, held, charged)
			if held < processed || charged > held || charged < processed {
				t.Fatalf("held %d and charged %d for audio the backend priced at %d credits; want held ≥ charged ≥ %d", held, charged, processed, processed)
			}
		})
	}
}
