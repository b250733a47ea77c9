package search

import (
	"io"
	"strings"

	"golang.org/x/net/html"
	"golang.org/x/net/html/atom"
)

// readable extracts a page's title and its main text from HTML: the first
// <article>, else <main>, else the element with role="main", else <body>;
// scripts, styles, navigation, headers, footers, asides, forms and hidden
// elements are dropped, whitespace is collapsed and blocks become paragraphs
// separated by a blank line.
func readable(r io.Reader) (title, content string, err error) {
	doc, err := html.Parse(r)
	if err != nil {
		return "", "", err
	}
	title = collapse(textOf(find(doc, func(n *html.Node) bool { return n.DataAtom == atom.Title })))
	root := find(doc, func(n *html.Node) bool { return n.DataAtom == atom.Article })
	if root == nil {
		root = find(doc, func(n *html.Node) bool { return n.DataAtom == atom.Main })
	}
	if root == nil {
		root = find(doc, func(n *html.Node) bool { return n.Type == html.ElementNode && attr(n, "role") == "main" })
	}
	if root == nil {
		root = find(doc, func(n *html.Node) bool { return n.DataAtom == atom.Body })
	}
	if root == nil {
		root = doc
	}
	if title == "" {
		title = collapse(textOf(find(root, func(n *html.Node) bool { return n.DataAtom == atom.H1 })))
	}
	var w blockWriter
	w.walk(root)
	return title, w.String(), nil
}

func find(n *html.Node, match func(*html.Node) bool) *html.Node {
	if n == nil {
		return nil
	}
	if n.Type == html.ElementNode && match(n) {
		return n
	}
	for c := n.FirstChild; c != nil; c = c.NextSibling {
		if f := find(c, match); f != nil {
			return f
		}
	}
	return nil
}

func attr(n *html.Node, key string) string {
	for _, a := range n.Attr {
		if a.Key == key {
			return a.Val
		}
	}
	return ""
}

func textOf(n *html.Node) string {
	if n == nil {
		return ""
	}
	var b strings.Builder
	var walk func(*html.Node)
	walk = func(n *html.Node) {
		if n.Type == html.TextNode {
			b.WriteString(n.Data)
		}
		for c := n.FirstChild; c != nil; c = c.NextSibling {
			walk(c)
		}
	}
	walk(n)
	return b.String()
}

func collapse(s string) string { return strings.Join(strings.Fields(s), " ") }

// skipped reports elements whose text is never readable content.
func skipped(n *html.Node) bool {
	switch n.DataAtom {
	case atom.Script, atom.Style, atom.Noscript, atom.Template, atom.Svg, atom.Math, atom.Nav,
		atom.Header, atom.Footer, atom.Aside, atom.Form, atom.Iframe, atom.Button, atom.Select,
		atom.Textarea, atom.Head, atom.Object, atom.Canvas, atom.Title:
		return true
	}
	if _, hidden := attrPresent(n, "hidden"); hidden || attr(n, "aria-hidden") == "true" {
		return true
	}
	return false
}

func attrPresent(n *html.Node, key string) (string, bool) {
	for _, a := range n.Attr {
		if a.Key == key {
			return a.Val, true
		}
	}
	return "", false
}

// block reports elements that start a new paragraph.
func block(n *html.Node) bool {
	switch n.DataAtom {
	case atom.P, atom.Div, atom.Section, atom.Article, atom.Main, atom.H1, atom.H2, atom.H3, atom.H4,
		atom.H5, atom.H6, atom.Li, atom.Ul, atom.Ol, atom.Dl, atom.Dt, atom.Dd, atom.Blockquote, atom.Pre,
		atom.Table, atom.Tr, atom.Figcaption, atom.Figure, atom.Br, atom.Hr, atom.Body:
		return true
	}
	return false
}

// blockWriter gathers text into paragraphs.
type blockWriter struct {
	paras []string
	cur   strings.Builder
}

func (w *blockWriter) flush() {
	if p := collapse(w.cur.String()); p != "" {
		w.paras = append(w.paras, p)
	}
	w.cur.Reset()
}

func (w *blockWriter) walk(n *html.Node) {
	switch n.Type {
	case html.TextNode:
		w.cur.WriteString(n.Data)
		return
	case html.ElementNode:
		if skipped(n) {
			return
		}
		if block(n) {
			w.flush()
			defer w.flush()
		} else {
			// Inline elements still separate words: "<b>a</b><i>b</i>"
			// reads as two words only if the source had a space, so keep
			// the source as is, but td cells need a gap.
			if n.DataAtom == atom.Td || n.DataAtom == atom.Th {
				w.cur.WriteByte(' ')
			}
		}
	case html.CommentNode, html.DoctypeNode:
		return
	}
	for c := n.FirstChild; c != nil; c = c.NextSibling {
		w.walk(c)
	}
}

func (w *blockWriter) String() string {
	w.flush()
	return strings.Join(w.paras, "\n\n")
}
