package webhookdev_test

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/mana/apigw/proto/webhook"
	"github.com/mana/apigw/services/testenv"
	"github.com/mana/apigw/services/webhookdev"
)

// TestVerifiesWhatTheGatewaySigns: the receiver's own HMAC code accepts
// the gateway's signature, refuses a wrong secret or a stale timestamp, and
// keeps a repeated webhook-id once.
func TestVerifiesWhatTheGatewaySigns(t *testing.T) {
	h, err := webhookdev.New(webhookdev.Config{}, testenv.Logger(t))
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	secret := webhook.NewSecret()
	if r := post(t, srv.URL+"/secrets", `{"secret":"`+secret+`"}`, nil); r != http.StatusNoContent {
		t.Fatalf("add secret: %d", r)
	}
	send := func(secret, id string, at time.Time) int {
		body := `{"type":"credits.threshold","timestamp":"2026-03-15T12:00:00Z","data":{"threshold":80}}`
		sig, err := webhook.Sign(secret, id, at, []byte(body))
		if err != nil {
			t.Fatal(err)
		}
		return post(t, srv.URL+"/hook", body, map[string]string{"webhook-id": id,
			"webhook-timestamp": strconv.FormatInt(at.Unix(), 10), "webhook-signature": "v1,bm9wZQ== " + sig})
	}
	now := time.Now()
	for name, tc := range map[string]struct {
		secret, id string
		at         time.Time
		want       int
	}{
		"signed":          {secret, "msg_1", now, http.StatusNoContent},
		"repeated":        {secret, "msg_1", now, http.StatusNoContent},
		"another secret":  {webhook.NewSecret(), "msg_2", now, http.StatusUnauthorized},
		"stale timestamp": {secret, "msg_3", now.Add(-10 * time.Minute), http.StatusUnauthorized},
	} {
		if got := send(tc.secret, tc.id, tc.at); got != tc.want {
			t.Errorf("%s: %d, want %d", name, got, tc.want)
		}
	}
	resp, err := http.Get(srv.URL + "/received")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var got struct{ Data []webhookdev.Received }
	if err := json.NewDecoder(resp.Body).Decode(&got); err != nil {
		t.Fatal(err)
	}
	if len(got.Data) != 1 || got.Data[0].ID != "msg_1" || got.Data[0].Repeats != 1 || got.Data[0].Type != "credits.threshold" {
		t.Fatalf("received %+v", got.Data)
	}
}

func post(t *testing.T, url, body string, header map[string]string) int {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	for k, v := range header {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	_ = resp.Body.Close()
	return resp.StatusCode
}
