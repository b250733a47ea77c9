package server

import (
	"testing"

	"github.com/mana/apigw/gateway/internal/pricing"
	"github.com/mana/apigw/gateway/internal/proxy"
)

// TestTierCatalog: GET /tiers lists each tier of the pricing file with the
// edge's routes it allows, priced from the same file.
func TestTierCatalog(t *testing.T) {
	p, err := pricing.Default()
	if err != nil {
		t.Fatal(err)
	}
	got := TierCatalog(p)
	if len(got) != 3 || got[0].Name != "free" || got[1].Name != "pro" || got[2].Name != "enterprise" {
		t.Fatalf("tiers %+v", got)
	}
	free := map[string]bool{}
	for _, e := range got[0].Endpoints {
		free[e.Operation] = true
	}
	for _, op := range []string{"search", "extract", "extract-bulk", "search-engines", "key"} {
		if !free[op] {
			t.Errorf("free lacks %s", op)
		}
	}
	for _, op := range []string{"stt-transcribe", "tts-synthesize", "tts-voices"} {
		if free[op] {
			t.Errorf("free allows %s", op)
		}
	}
	if got[0].RateLimitPerMinute != 10 || got[0].MonthlyCredits != 100 {
		t.Errorf("free limits %+v", got[0])
	}
	if n := len(got[1].Endpoints); n != len(proxy.Routes()) {
		t.Errorf("pro allows %d endpoints, want all %d", n, len(proxy.Routes()))
	}
	for _, e := range got[1].Endpoints {
		switch e.Operation {
		case "stt-transcribe":
			if e.Method != "POST" || e.Path != "/v1/stt/transcribe" || e.Unit != pricing.UnitAudioSecond || e.Credits != 10 || e.Per != 60 {
				t.Errorf("stt %+v", e)
			}
		case "tts-synthesize":
			if e.Unit != pricing.UnitCharacter || e.Credits != 1 || e.Per != 1000 {
				t.Errorf("tts %+v", e)
			}
		}
	}
}
