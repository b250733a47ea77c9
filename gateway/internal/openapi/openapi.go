// Package openapi owns the gateway's OpenAPI 3.1 document: every public,
// management and system route with its bodies, answers, headers and
// problem+json errors. The document is written by hand in openapi.yaml,
// embedded in the binary, served as YAML and as JSON, and checked by this
// package's tests against the real router and real responses.
package openapi

import (
	"bytes"
	_ "embed" // the document
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"sync"

	"github.com/labstack/echo/v4"
	"go.yaml.in/yaml/v3"
)

//go:embed openapi.yaml
var spec []byte

// Media types the document is served as.
const (
	ContentTypeYAML = "application/yaml"
	ContentTypeJSON = "application/json"
)

// Spec returns the document as written (YAML).
func Spec() []byte { return bytes.Clone(spec) }

// convertOnce converts the embedded document once, on first use.
var convertOnce = sync.OnceValues(func() ([]byte, error) { return yamlToJSON(spec) })

// JSON returns the document as JSON. It is converted from the YAML once,
// on first use; every call returns its own copy.
func JSON() ([]byte, error) {
	b, err := convertOnce()
	if err != nil {
		return nil, err
	}
	return bytes.Clone(b), nil
}

// Register adds GET /openapi.json and GET /openapi.yaml to e. The answers may
// be cached for five minutes.
func Register(e *echo.Echo) {
	e.GET("/openapi.json", func(c echo.Context) error {
		b, err := convertOnce()
		if err != nil {
			return fmt.Errorf("openapi document: %w", err)
		}
		return serve(c, ContentTypeJSON, b)
	})
	e.GET("/openapi.yaml", func(c echo.Context) error {
		return serve(c, ContentTypeYAML, spec)
	})
}

func serve(c echo.Context, contentType string, b []byte) error {
	h := c.Response().Header()
	h.Set("Cache-Control", "public, max-age=300")
	h.Set(echo.HeaderContentLength, strconv.Itoa(len(b)))
	return c.Blob(http.StatusOK, contentType, b)
}

// yamlToJSON converts one YAML document to JSON, keeping the order of keys
// and every scalar as written: strings stay strings (a date or a version is
// never reinterpreted), anchors, aliases and merge keys are resolved, and a
// duplicate key is an error.
func yamlToJSON(in []byte) ([]byte, error) {
	dec := yaml.NewDecoder(bytes.NewReader(in))
	var doc, extra yaml.Node
	if err := dec.Decode(&doc); err != nil {
		return nil, fmt.Errorf("parse openapi yaml: %w", err)
	}
	if err := dec.Decode(&extra); !errors.Is(err, io.EOF) || doc.Kind != yaml.DocumentNode || len(doc.Content) != 1 {
		return nil, errors.New("parse openapi yaml: want exactly one document")
	}
	var buf bytes.Buffer
	budget := maxNodes
	if err := writeJSON(&buf, doc.Content[0], 0, &budget); err != nil {
		return nil, fmt.Errorf("convert openapi yaml: %w", err)
	}
	return buf.Bytes(), nil
}

// maxDepth bounds nesting (and alias chains) so that a cyclic alias fails
// instead of recursing forever; maxNodes and maxBytes bound the output, so
// that aliases of aliases cannot expand without end.
const (
	maxDepth = 200
	maxNodes = 1 << 20
	maxBytes = 16 << 20
)

func writeJSON(buf *bytes.Buffer, n *yaml.Node, depth int, budget *int) error {
	if depth > maxDepth {
		return fmt.Errorf("line %d: nested deeper than %d levels", n.Line, maxDepth)
	}
	if *budget--; *budget < 0 {
		return fmt.Errorf("line %d: the document expands to more than %d values", n.Line, maxNodes)
	}
	if buf.Len() > maxBytes {
		return fmt.Errorf("line %d: the document expands to more than %d bytes", n.Line, maxBytes)
	}
	switch n.Kind {
	case yaml.AliasNode:
		return writeJSON(buf, n.Alias, depth+1, budget)
	case yaml.MappingNode:
		pairs, err := mappingPairs(n, depth, budget)
		if err != nil {
			return err
		}
		buf.WriteByte('{')
		for i, p := range pairs {
			if i > 0 {
				buf.WriteByte(',')
			}
			if err := writeValue(buf, p.key); err != nil {
				return err
			}
			buf.WriteByte(':')
			if err := writeJSON(buf, p.value, depth+1, budget); err != nil {
				return err
			}
		}
		buf.WriteByte('}')
		return nil
	case yaml.SequenceNode:
		buf.WriteByte('[')
		for i, item := range n.Content {
			if i > 0 {
				buf.WriteByte(',')
			}
			if err := writeJSON(buf, item, depth+1, budget); err != nil {
				return err
			}
		}
		buf.WriteByte(']')
		return nil
	case yaml.ScalarNode:
		if buf.Len()+len(n.Value) > maxBytes {
			return fmt.Errorf("line %d: the document expands to more than %d bytes", n.Line, maxBytes)
		}
		return writeScalar(buf, n)
	}
	return fmt.Errorf("line %d: unexpected YAML node kind %d", n.Line, n.Kind)
}

func writeScalar(buf *bytes.Buffer, n *yaml.Node) error {
	var v any
	switch n.ShortTag() {
	case "!!null":
		buf.WriteString("null")
		return nil
	case "!!bool", "!!int", "!!float":
		if err := n.Decode(&v); err != nil {
			return fmt.Errorf("line %d: %w", n.Line, err)
		}
	default: // !!str, !!timestamp, !!binary: the text as written
		v = n.Value
	}
	if err := writeValue(buf, v); err != nil {
		return fmt.Errorf("line %d: %w", n.Line, err)
	}
	return nil
}

// writeValue writes v as JSON without escaping <, > and & (the document
// is data, not HTML).
func writeValue(buf *bytes.Buffer, v any) error {
	enc := json.NewEncoder(buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		return err
	}
	buf.Truncate(buf.Len() - 1) // Encode's newline
	return nil
}

type pair struct {
	key   string
	value *yaml.Node
}

// mappingPairs returns a mapping's entries in order. A merge key (<<) adds
// the entries of the mapping(s) it names that the mapping does not set
// itself, at its place.
func mappingPairs(n *yaml.Node, depth int, budget *int) ([]pair, error) {
	explicit := map[string]bool{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k := n.Content[i]
		if isMerge(k) {
			continue
		}
		if k.Kind != yaml.ScalarNode {
			return nil, fmt.Errorf("line %d: a mapping key must be a scalar", k.Line)
		}
		if explicit[k.Value] {
			return nil, fmt.Errorf("line %d: duplicate key %q", k.Line, k.Value)
		}
		explicit[k.Value] = true
	}
	var out []pair
	merged := map[string]bool{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		if !isMerge(k) {
			out = append(out, pair{k.Value, v})
			continue
		}
		sources := []*yaml.Node{v}
		if resolve(v).Kind == yaml.SequenceNode {
			sources = resolve(v).Content
		}
		for _, src := range sources {
			src = resolve(src)
			if src.Kind != yaml.MappingNode {
				return nil, fmt.Errorf("line %d: a merge key must name a mapping", k.Line)
			}
			if depth > maxDepth {
				return nil, fmt.Errorf("line %d: merges nested deeper than %d levels", k.Line, maxDepth)
			}
			if *budget -= len(src.Content); *budget < 0 {
				return nil, fmt.Errorf("line %d: the document expands to more than %d values", k.Line, maxNodes)
			}
			inner, err := mappingPairs(src, depth+1, budget)
			if err != nil {
				return nil, err
			}
			for _, p := range inner {
				if !explicit[p.key] && !merged[p.key] {
					merged[p.key] = true
					out = append(out, p)
				}
			}
		}
	}
	return out, nil
}

func isMerge(k *yaml.Node) bool {
	return k.Kind == yaml.ScalarNode && k.ShortTag() == "!!merge"
}

func resolve(n *yaml.Node) *yaml.Node {
	for i := 0; n.Kind == yaml.AliasNode && i < maxDepth; i++ {
		n = n.Alias
	}
	return n
}
