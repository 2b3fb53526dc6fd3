package fence

import (
	"encoding/json"
	"strings"
	"testing"
)

func TestIsSecretParam(t *testing.T) {
	for name, want := range map[string]bool{
		"password": true, "passwd": true, "PASSWORD": true, "snmp_priv_passwd": true, "community": true,
		"api_token": true, "client_secret": true, "ip": false, "username": false, "plug": false, "lanplus": false,
	} {
		if IsSecretParam(name) != want {
			t.Errorf("IsSecretParam(%q) = %v", name, !want)
		}
	}
}

func TestDeviceJSONRedacts(t *testing.T) {
	d := NewDevice("ipmi-n1", "fence_ipmilan", map[string]string{"ip": "10.0.0.21", "password": "top-secret-1"})
	j, err := json.Marshal(d)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(j), "top-secret") || !strings.Contains(string(j), `"password":"[redacted]"`) || !strings.Contains(string(j), `"ip":"10.0.0.21"`) {
		t.Fatalf("json %s", j)
	}
	if d.Secrets["password"].Reveal() != "top-secret-1" {
		t.Fatal("Reveal lost the value")
	}
	d.SetParam("password", "other")
	d.SetParam("plug", "3")
	if len(d.Secrets) != 1 || d.Params["plug"] != "3" {
		t.Fatalf("SetParam: %+v", d)
	}
}

// FuzzDeviceStdin: whatever a configuration holds, a device that validates
// renders exactly one line per parameter with action last, so no value can
// smuggle in a second action.
func FuzzDeviceStdin(f *testing.F) {
	f.Add("ip", "10.0.0.1", "password", "pw", "plug", "1")
	f.Add("plug", "1\naction=on", "passwd", "x", "a", "b")
	f.Add("action", "on", "option", "off", "x=y", "z")
	f.Add("port", "1\r", "community", "\x00", "ipport", "623")
	f.Fuzz(func(t *testing.T, k1, v1, k2, v2, k3, v3 string) {
		d := NewDevice("dev", "fence_x", map[string]string{k1: v1, k2: v2, k3: v3})
		if err := d.Validate(); err != nil {
			return
		}
		in := d.stdin(ActionStatus, nil)
		lines := strings.Split(strings.TrimSuffix(in, "\n"), "\n")
		if len(lines) != len(d.Params)+len(d.Secrets)+1 {
			t.Fatalf("%d lines for %d params:\n%q", len(lines), len(d.Params)+len(d.Secrets), in)
		}
		for _, l := range lines[:len(lines)-1] {
			k, _, ok := strings.Cut(l, "=")
			if !ok || strings.EqualFold(k, "action") || strings.EqualFold(k, "option") {
				t.Fatalf("bad line %q in\n%q", l, in)
			}
		}
		if lines[len(lines)-1] != "action=status" {
			t.Fatalf("last line %q", lines[len(lines)-1])
		}
	})
}
