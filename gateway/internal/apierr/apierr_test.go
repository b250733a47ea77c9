package apierr

import (
	"errors"
	"fmt"
	"net/http"
	"testing"
	"time"
)

func TestTable(t *testing.T) {
	want := map[Code]struct {
		status int
		header http.Header
	}{
		Internal:         {500, nil},
		Invalid:          {400, nil},
		BadFraming:       {400, http.Header{"Connection": {"close"}}},
		Unprocessable:    {422, nil},
		BodyTooLarge:     {413, nil},
		UnsupportedMedia: {415, nil},
		LengthRequired:   {411, nil},
		BodyTimeout:      {408, nil},
		KeyRefused:       {401, nil},
		TokenRefused:     {401, http.Header{"Www-Authenticate": {`Bearer error="invalid_token"`}}},
		Unauthenticated:  {401, nil},
		Forbidden:        {403, nil},
		NotFound:         {404, nil},
		Conflict:         {409, nil},
		CreditsExhausted: {402, nil},
		RateLimited:      {429, nil},
		Unavailable:      {503, nil},
		Stopping:         {503, http.Header{"Connection": {"close"}}},
		BadGateway:       {502, nil},
		GatewayTimeout:   {504, nil},
	}
	if len(want) != int(numCodes) {
		t.Fatalf("the test knows %d codes, the table %d", len(want), numCodes)
	}
	for c := range numCodes {
		w := want[c]
		e := Lookup(c)
		if e.Status != w.status || e.Title != http.StatusText(w.status) || e.Type != "about:blank" || fmt.Sprint(e.Header) != fmt.Sprint(w.header) {
			t.Errorf("code %d: %+v, want %d %v", c, e, w.status, w.header)
		}
	}
	if e := Lookup(numCodes + 3); e.Status != 500 {
		t.Fatalf("an unknown code is %d", e.Status)
	}
	e := Lookup(BadFraming)
	e.Header.Set("Connection", "keep-alive")
	if Lookup(BadFraming).Header.Get("Connection") != "close" {
		t.Fatal("Lookup's header is the table's own")
	}
}

func TestInstances(t *testing.T) {
	base := New(Unavailable, "down")
	withRetry := base.RetryIn(5 * time.Second)
	inst := withRetry.WithDetail("down for now")
	other := New(Unavailable, "down")
	if !errors.Is(inst, base) || !errors.Is(inst, withRetry) || !errors.Is(fmt.Errorf("x: %w", inst), base) {
		t.Fatal("an instance does not match what it was made from")
	}
	if errors.Is(inst, other) || errors.Is(base, inst) || errors.Is(base, withRetry) {
		t.Fatal("an error matches what it is not an instance of")
	}
	if d, ok := inst.RetryAfter(); !ok || d != 5*time.Second || inst.Detail() != "down for now" || inst.Code() != Unavailable {
		t.Fatalf("instance %+v", inst)
	}
	if _, ok := base.RetryAfter(); ok || base.Detail() != "down" {
		t.Fatalf("making an instance changed its sentinel: %+v", base)
	}
	m := map[string]any{"checks": "x"}
	wm := base.WithMembers(m)
	m["checks"] = "y"
	if wm.Members()["checks"] != "x" || base.Members() != nil {
		t.Fatal("members are not the instance's own")
	}
}
