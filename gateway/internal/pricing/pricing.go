// Package pricing owns the tiers and the operation costs: loaded from one YAML
// file, validated at start with every problem reported at once.
package pricing

import (
	"bytes"
	_ "embed"
	"errors"
	"fmt"
	"os"
	"slices"
	"sort"
	"strings"

	"go.yaml.in/yaml/v3"
)

//go:embed pricing.yaml
var defaultFile []byte

// Units a cost can be counted in.
const (
	UnitRequest     = "request"
	UnitURL         = "url"
	UnitAudioSecond = "audio_second"
	UnitCharacter   = "character"
)

// Tier is what a key of that tier may do.
type Tier struct {
	Name               string   `yaml:"-"`
	RateLimitPerMinute int      `yaml:"rateLimitPerMinute"`
	MonthlyCredits     int64    `yaml:"monthlyCredits"`
	Endpoints          []string `yaml:"endpoints"`
	// ConcurrentCalls caps one key's calls in flight per gateway; 0 is
	// the gateway's CONCURRENT_CALLS_PER_KEY.
	ConcurrentCalls int `yaml:"concurrentCalls"`
}

// Allows reports whether the tier may call the operation.
func (t Tier) Allows(op string) bool {
	return slices.Contains(t.Endpoints, "*") || slices.Contains(t.Endpoints, op)
}

// Operation prices one public operation: Credits per Per units of Unit, rounded up.
type Operation struct {
	Unit    string `yaml:"unit"`
	Credits int64  `yaml:"credits"`
	Per     int64  `yaml:"per"`
}

// Cost is ceil(units * Credits / Per); zero or negative units cost nothing.
func (o Operation) Cost(units int64) int64 {
	if units <= 0 || o.Credits == 0 {
		return 0
	}
	n := units * o.Credits
	return (n + o.Per - 1) / o.Per
}

// Pricing is the whole file.
type Pricing struct {
	Tiers      map[string]Tier      `yaml:"tiers"`
	Operations map[string]Operation `yaml:"operations"`
}

// Default returns the embedded pricing (the seed's table).
func Default() (*Pricing, error) { return Parse(defaultFile) }

// Load reads a pricing file; an empty path means Default.
func Load(path string) (*Pricing, error) {
	if path == "" {
		return Default()
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("pricing: %w", err)
	}
	return Parse(b)
}

// Parse decodes and validates a pricing document. Unknown fields are errors.
func Parse(b []byte) (*Pricing, error) {
	var p Pricing
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	if err := dec.Decode(&p); err != nil {
		return nil, fmt.Errorf("pricing: decode: %w", err)
	}
	if err := p.Validate(); err != nil {
		return nil, err
	}
	for name, t := range p.Tiers {
		t.Name = name
		p.Tiers[name] = t
	}
	return &p, nil
}

// Validate reports every problem at once.
func (p *Pricing) Validate() error {
	var errs []error
	if len(p.Tiers) == 0 {
		errs = append(errs, errors.New("no tiers"))
	}
	if len(p.Operations) == 0 {
		errs = append(errs, errors.New("no operations"))
	}
	for _, name := range sortedKeys(p.Operations) {
		o := p.Operations[name]
		switch o.Unit {
		case UnitRequest, UnitURL, UnitAudioSecond, UnitCharacter:
		default:
			errs = append(errs, fmt.Errorf("operation %s: unknown unit %q", name, o.Unit))
		}
		if o.Credits < 0 {
			errs = append(errs, fmt.Errorf("operation %s: credits must not be negative", name))
		}
		if o.Per <= 0 {
			errs = append(errs, fmt.Errorf("operation %s: per must be positive", name))
		}
	}
	for _, name := range sortedKeys(p.Tiers) {
		t := p.Tiers[name]
		if t.RateLimitPerMinute <= 0 {
			errs = append(errs, fmt.Errorf("tier %s: rateLimitPerMinute must be positive", name))
		}
		if t.MonthlyCredits < 0 {
			errs = append(errs, fmt.Errorf("tier %s: monthlyCredits must not be negative", name))
		}
		if t.ConcurrentCalls < 0 {
			errs = append(errs, fmt.Errorf("tier %s: concurrentCalls must not be negative", name))
		}
		if len(t.Endpoints) == 0 {
			errs = append(errs, fmt.Errorf("tier %s: no endpoints", name))
		}
		for _, ep := range t.Endpoints {
			if _, ok := p.Operations[ep]; !ok && ep != "*" {
				errs = append(errs, fmt.Errorf("tier %s: unknown endpoint %q", name, ep))
			}
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("pricing: %w", errors.Join(errs...))
	}
	return nil
}

// RequireOperations reports operations the gateway serves that the file does not price.
func (p *Pricing) RequireOperations(names []string) error {
	var errs []error
	for _, n := range names {
		if _, ok := p.Operations[n]; !ok {
			errs = append(errs, fmt.Errorf("operation %s has no price", n))
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("pricing: %w", errors.Join(errs...))
	}
	return nil
}

// Tier implements the management API's tier lookup.
func (p *Pricing) Tier(name string) (rateLimitPerMinute int, monthlyCredits int64, ok bool) {
	t, ok := p.Tiers[name]
	return t.RateLimitPerMinute, t.MonthlyCredits, ok
}

func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// WithTiers returns the default pricing file with more tiers added, one
// YAML mapping line each (`name: {rateLimitPerMinute: …, monthlyCredits: …,
// endpoints: [...]}`). Tests and benchmarks use it for tiers sized to them,
// so the prices themselves have one source.
func WithTiers(lines ...string) []byte {
	var extra strings.Builder
	for _, l := range lines {
		extra.WriteString("  " + strings.TrimSpace(l) + "\n")
	}
	return []byte(strings.Replace(string(defaultFile), "\ntiers:\n", "\ntiers:\n"+extra.String(), 1))
}
