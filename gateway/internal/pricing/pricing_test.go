package pricing

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestDefaultIsTheSeedTable(t *testing.T) {
	p, err := Default()
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		tier    string
		rate    int
		credits int64
		stt     bool
	}{
		{"free", 10, 100, false},
		{"pro", 100, 5000, true},
		{"enterprise", 1000, 50000, true},
	} {
		tr := p.Tiers[tc.tier]
		if tr.RateLimitPerMinute != tc.rate || tr.MonthlyCredits != tc.credits || tr.Allows("stt-transcribe") != tc.stt || !tr.Allows("search") {
			t.Errorf("tier %s = %+v", tc.tier, tr)
		}
	}
}

func TestCostBoundaries(t *testing.T) {
	p, err := Default()
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		op    string
		units int64
		want  int64
	}{
		{"tts-synthesize", 0, 0},
		{"tts-synthesize", 1, 1},
		{"tts-synthesize", 999, 1},
		{"tts-synthesize", 1000, 1},
		{"tts-synthesize", 1001, 2},
		{"stt-transcribe", 0, 0},
		{"stt-transcribe", 1, 1},
		{"stt-transcribe", 6, 1},
		{"stt-transcribe", 7, 2},
		{"stt-transcribe", 59, 10},
		{"stt-transcribe", 60, 10},
		{"stt-transcribe", 61, 11},
		{"extract-bulk", 3, 3},
		{"search", 1, 1},
		{"search-engines", 1, 0},
	} {
		if got := p.Operations[tc.op].Cost(tc.units); got != tc.want {
			t.Errorf("%s(%d) = %d, want %d", tc.op, tc.units, got, tc.want)
		}
	}
}

func TestBadFilesReportEveryProblem(t *testing.T) {
	bad := `
tiers:
  free: {rateLimitPerMinute: 0, monthlyCredits: -1, endpoints: [nope]}
operations:
  search: {unit: parsec, credits: -1, per: 0}
`
	_, err := Parse([]byte(bad))
	if err == nil {
		t.Fatal("want error")
	}
	for _, want := range []string{"rateLimitPerMinute", "monthlyCredits", "unknown endpoint", "unknown unit", "credits must not", "per must"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q lacks %q", err, want)
		}
	}
	if _, err := Parse([]byte("tiers: {}\nextra: 1\n")); err == nil {
		t.Error("unknown field accepted")
	}
	path := filepath.Join(t.TempDir(), "p.yaml")
	if err := os.WriteFile(path, defaultFile, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Load(path); err != nil {
		t.Errorf("load copy of default: %v", err)
	}
}

func TestWithTiersAddsToTheDefault(t *testing.T) {
	p, err := Parse(WithTiers(`load: {rateLimitPerMinute: 1000000, monthlyCredits: 1000, endpoints: ["*"]}`))
	if err != nil {
		t.Fatal(err)
	}
	if p.Tiers["load"].MonthlyCredits != 1000 || p.Tiers["free"].MonthlyCredits != 100 || p.Operations["search"].Credits != 1 {
		t.Fatalf("pricing %+v", p)
	}
}
