package fence

import (
	"fmt"
	"log/slog"
	"strings"
)

// redacted is what a Secret prints as, wherever it goes: fmt verbs, slog,
// JSON. It says that a value exists without saying anything about it (not
// even its length).
const redacted = "[redacted]"

// Secret holds a value that must never reach a log, an error, a status
// page or a metrics label: a fence device's password, an SNMP community.
// Every way of printing it prints "[redacted]"; the only way to the value is
// Reveal, which the agent runner calls when it writes the agent's stdin.
//
// A cluster configuration that has to store the real value (so that the
// other nodes can fence too) stores Reveal() in its own field; it does not
// marshal a Secret.
type Secret struct {
	value string
}

// NewSecret wraps s.
func NewSecret(s string) Secret { return Secret{value: s} }

// Reveal returns the value. Call it only to hand the value to the program
// that needs it.
func (s Secret) Reveal() string { return s.value }

// IsZero reports whether the secret is empty.
func (s Secret) IsZero() bool { return s.value == "" }

// String implements fmt.Stringer.
func (s Secret) String() string { return redacted }

// GoString implements fmt.GoStringer, so %#v redacts too.
func (s Secret) GoString() string { return `fence.Secret("` + redacted + `")` }

// Format makes every fmt verb (%v %s %q %x %d ...) print the redacted form;
// without it %x of the struct would print the value's bytes.
func (s Secret) Format(f fmt.State, verb rune) {
	switch verb {
	case 'q':
		fmt.Fprintf(f, "%q", redacted)
	default:
		fmt.Fprint(f, redacted)
	}
}

// LogValue implements slog.LogValuer.
func (s Secret) LogValue() slog.Value { return slog.StringValue(redacted) }

// MarshalJSON writes the redacted form: status and history JSON can carry a
// Device without leaking its password.
func (s Secret) MarshalJSON() ([]byte, error) { return []byte(`"` + redacted + `"`), nil }

// MarshalText is the same for encoders that use encoding.TextMarshaler
// (map keys, some YAML/TOML encoders).
func (s Secret) MarshalText() ([]byte, error) { return []byte(redacted), nil }

// secretParamWords are the parts of a fence-agent parameter name that mark it
// as secret. fence-agents spells the password "password"/"passwd" (and the
// older "passwd_script" is a path, not a secret, but treating it as one costs
// nothing); SNMP agents take "community"; API agents take tokens and keys.
var secretParamWords = []string{"passw", "secret", "token", "community", "api_key", "apikey", "private_key"}

// IsSecretParam reports whether a fence-agent parameter name holds a
// secret, by the words in secretParamWords (case-insensitive). It errs on the
// side of redacting: a parameter that is not secret but looks like one is
// only hidden from status, never lost.
func IsSecretParam(name string) bool {
	n := strings.ToLower(name)
	for _, w := range secretParamWords {
		if strings.Contains(n, w) {
			return true
		}
	}
	return false
}

// redactValues replaces every occurrence of each secret's value in s by
// "[redacted]". Agents echo their options in verbose or debug mode, and some
// print the failing command line, so captured output is scrubbed before it
// is returned or logged. Values shorter than minRedactLen are skipped: a
// one-character "password" would otherwise blank out every such letter.
func redactValues(s string, secrets map[string]Secret) string {
	for _, sec := range secrets {
		v := sec.Reveal()
		if len(v) < minRedactLen {
			continue
		}
		s = strings.ReplaceAll(s, v, redacted)
	}
	return s
}

// minRedactLen is the shortest secret value scrubbed from output; see
// redactValues.
const minRedactLen = 3
