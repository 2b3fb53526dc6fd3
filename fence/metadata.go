package fence

import (
	"bytes"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"strings"
)

// Limits on parsed metadata. Real agents have at most ~80 parameters
// (fence_ipmilan) and a few KiB of text; the limits leave room and stop a
// broken agent from filling memory or a terminal.
const (
	maxMetadataBytes      = metadataMaxOutputBytes
	maxMetadataParams     = 512
	maxMetadataActions    = 64
	maxMetadataOptions    = 64
	maxMetadataTextBytes  = 4096
	maxMetadataNameBytes  = 128
	maxMetadataXMLDepth   = 32
	maxMetadataXMLTokens  = 200_000
	metadataRootElement   = "resource-agent"
	metadataTruncatedText = "..."
)

// Metadata is what an agent's "metadata" action describes: its parameters
// and the actions it supports. It marshals to JSON as is (for
// `paddock fence agent-metadata --json` and a future config UI).
type Metadata struct {
	Name       string      `json:"name"`
	ShortDesc  string      `json:"shortdesc,omitempty"`
	LongDesc   string      `json:"longdesc,omitempty"`
	VendorURL  string      `json:"vendor_url,omitempty"`
	Parameters []Parameter `json:"parameters"`
	Actions    []string    `json:"actions"`
}

// Parameter is one parameter an agent takes on stdin.
type Parameter struct {
	Name       string   `json:"name"`
	Required   bool     `json:"required,omitempty"`
	Deprecated bool     `json:"deprecated,omitempty"`
	Obsoletes  string   `json:"obsoletes,omitempty"`
	Type       string   `json:"type,omitempty"` // string, boolean, integer, second, select
	Default    string   `json:"default,omitempty"`
	Options    []string `json:"options,omitempty"` // the choices of a select
	ShortDesc  string   `json:"shortdesc,omitempty"`
	Getopt     string   `json:"getopt,omitempty"` // the command-line spelling, for humans
	Secret     bool     `json:"secret,omitempty"` // IsSecretParam(Name)
}

// Parameter finds a parameter by name.
func (m Metadata) Parameter(name string) (Parameter, bool) {
	for _, p := range m.Parameters {
		if p.Name == name {
			return p, true
		}
	}
	return Parameter{}, false
}

// The XML shapes of fence-agents' lib/metadata.rng, as much as paddock reads.
type xmlAgent struct {
	XMLName   xml.Name `xml:"resource-agent"`
	Name      string   `xml:"name,attr"`
	ShortDesc string   `xml:"shortdesc,attr"`
	LongDesc  string   `xml:"longdesc"`
	VendorURL string   `xml:"vendor-url"`
	Params    []struct {
		Name       string `xml:"name,attr"`
		Required   string `xml:"required,attr"`
		Deprecated string `xml:"deprecated,attr"`
		Obsoletes  string `xml:"obsoletes,attr"`
		Getopt     struct {
			Mixed string `xml:"mixed,attr"`
		} `xml:"getopt"`
		Content struct {
			Type    string `xml:"type,attr"`
			Default string `xml:"default,attr"`
			Options []struct {
				Value string `xml:"value,attr"`
			} `xml:"option"`
		} `xml:"content"`
		ShortDescs []struct {
			Lang string `xml:"lang,attr"`
			Text string `xml:",chardata"`
		} `xml:"shortdesc"`
	} `xml:"parameters>parameter"`
	Actions []struct {
		Name string `xml:"name,attr"`
	} `xml:"actions>action"`
}

// ParseMetadata parses the XML an agent prints for action=metadata. It
// accepts what fence-agents' metadata.rng describes, ignores what it does
// not know, and refuses (with an error, never a panic) input that is too
// big, too deep, not a resource-agent, or has a parameter without a usable
// name.
func ParseMetadata(data []byte) (Metadata, error) {
	if len(data) > maxMetadataBytes {
		return Metadata{}, fmt.Errorf("metadata of %d bytes, at most %d", len(data), maxMetadataBytes)
	}
	// Some agents print warnings before the XML; start at the XML.
	if i := bytes.Index(data, []byte("<?xml")); i > 0 {
		data = data[i:]
	} else if i < 0 {
		if j := bytes.Index(data, []byte("<"+metadataRootElement)); j > 0 {
			data = data[j:]
		}
	}
	if err := checkXMLShape(data); err != nil {
		return Metadata{}, err
	}
	var x xmlAgent
	dec := xml.NewDecoder(bytes.NewReader(data))
	dec.Strict = true
	if err := dec.Decode(&x); err != nil {
		return Metadata{}, fmt.Errorf("metadata XML: %w", err)
	}
	md := Metadata{
		Name:      clip(x.Name, maxMetadataNameBytes),
		ShortDesc: clip(strings.TrimSpace(x.ShortDesc), maxMetadataTextBytes),
		LongDesc:  clip(strings.TrimSpace(x.LongDesc), maxMetadataTextBytes),
		VendorURL: clip(strings.TrimSpace(x.VendorURL), maxMetadataTextBytes),
	}
	if md.Name == "" {
		return Metadata{}, errors.New("metadata: resource-agent has no name")
	}
	if len(x.Params) > maxMetadataParams {
		return Metadata{}, fmt.Errorf("metadata: %d parameters, at most %d", len(x.Params), maxMetadataParams)
	}
	if len(x.Actions) > maxMetadataActions {
		return Metadata{}, fmt.Errorf("metadata: %d actions, at most %d", len(x.Actions), maxMetadataActions)
	}
	seen := map[string]bool{}
	md.Parameters = make([]Parameter, 0, len(x.Params))
	for i, xp := range x.Params {
		if len(xp.Name) > maxParamNameBytes || !paramNameRe.MatchString(xp.Name) {
			return Metadata{}, fmt.Errorf("metadata: parameter %d: bad name %q", i, clip(xp.Name, maxMetadataNameBytes))
		}
		if seen[xp.Name] {
			// Agents never repeat a name; if one does, the first wins
			// (what a reader of the XML would see first).
			continue
		}
		seen[xp.Name] = true
		p := Parameter{
			Name:       xp.Name,
			Required:   xp.Required == "1",
			Deprecated: xp.Deprecated == "1",
			Obsoletes:  clip(xp.Obsoletes, maxMetadataNameBytes),
			Type:       clip(xp.Content.Type, maxMetadataNameBytes),
			Default:    clip(xp.Content.Default, maxMetadataTextBytes),
			Getopt:     clip(xp.Getopt.Mixed, maxMetadataNameBytes),
			Secret:     IsSecretParam(xp.Name),
		}
		for _, o := range xp.Content.Options {
			if len(p.Options) == maxMetadataOptions {
				break
			}
			p.Options = append(p.Options, clip(o.Value, maxMetadataNameBytes))
		}
		// Prefer the English description; else the first.
		for j, d := range xp.ShortDescs {
			if j == 0 || d.Lang == "en" {
				p.ShortDesc = clip(strings.TrimSpace(d.Text), maxMetadataTextBytes)
			}
			if d.Lang == "en" {
				break
			}
		}
		md.Parameters = append(md.Parameters, p)
	}
	md.Actions = make([]string, 0, len(x.Actions))
	for _, a := range x.Actions {
		if a.Name == "" {
			continue
		}
		md.Actions = append(md.Actions, clip(a.Name, maxMetadataNameBytes))
	}
	return md, nil
}

// checkXMLShape walks the tokens once to bound depth and count before the
// real decode: encoding/xml has no depth limit of its own.
func checkXMLShape(data []byte) error {
	dec := xml.NewDecoder(bytes.NewReader(data))
	dec.Strict = true
	depth, tokens := 0, 0
	for {
		tok, err := dec.RawToken()
		if err != nil {
			if errors.Is(err, io.EOF) {
				break
			}
			return fmt.Errorf("metadata XML: %w", err)
		}
		tokens++
		if tokens > maxMetadataXMLTokens {
			return fmt.Errorf("metadata XML: more than %d tokens", maxMetadataXMLTokens)
		}
		switch t := tok.(type) {
		case xml.StartElement:
			if depth == 0 && t.Name.Local != metadataRootElement {
				return fmt.Errorf("metadata XML: root element <%s>, want <%s>", clip(t.Name.Local, maxMetadataNameBytes), metadataRootElement)
			}
			depth++
			if depth > maxMetadataXMLDepth {
				return fmt.Errorf("metadata XML: nested deeper than %d", maxMetadataXMLDepth)
			}
		case xml.EndElement:
			depth--
		}
	}
	if tokens == 0 {
		return errors.New("metadata XML: empty")
	}
	return nil
}

// clip bounds a string from untrusted XML, cutting at a rune boundary.
func clip(s string, n int) string {
	if len(s) <= n {
		return s
	}
	cut := n
	for cut > 0 && !utf8RuneStart(s[cut]) {
		cut--
	}
	return s[:cut] + metadataTruncatedText
}

func utf8RuneStart(b byte) bool { return b&0xC0 != 0x80 }
