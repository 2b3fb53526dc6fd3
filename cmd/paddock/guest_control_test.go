package main

import (
	"encoding/json"
	"testing"
)

func TestParseGuestRequest(t *testing.T) {
	good := `{"op":"migrate","migrate":{"to":"10.0.0.2:7000","transport":"tcp","downtime_ms":100,"timeout_ms":60000,"streams":8,"compress":"auto"}}`
	if _, err := parseGuestRequest([]byte(good)); err != nil {
		t.Fatal(err)
	}
	for _, bad := range []string{
		``, `{}`, `{"op":"reboot"}`, `{"op":"status","migrate":{}}`, `{"op":"migrate"}`,
		`{"op":"status","extra":1}`,
		`{"op":"migrate","migrate":{"to":"nohost","transport":"tcp","downtime_ms":100,"timeout_ms":1,"streams":1,"compress":"auto"}}`,
		`{"op":"migrate","migrate":{"to":"a:1","transport":"udp","downtime_ms":100,"timeout_ms":1,"streams":1,"compress":"auto"}}`,
		`{"op":"migrate","migrate":{"to":"a:1","transport":"tcp","downtime_ms":0,"timeout_ms":1,"streams":1,"compress":"auto"}}`,
		`{"op":"migrate","migrate":{"to":"a:1","transport":"tcp","downtime_ms":1,"timeout_ms":1,"streams":65,"compress":"auto"}}`,
		`{"op":"migrate","migrate":{"to":"a:1","transport":"tcp","downtime_ms":1,"timeout_ms":1,"streams":1,"compress":"lz4"}}`,
		`{"op":"migrate","migrate":{"to":"a:1","transport":"tcp","downtime_ms":1,"timeout_ms":1,"streams":1,"compress":"auto","bandwidth_bytes_per_second":-1}}`,
	} {
		if _, err := parseGuestRequest([]byte(bad)); err == nil {
			t.Errorf("accepted %s", bad)
		}
	}
	if _, err := parseGuestRequest(make([]byte, maxGuestRequestBytes+1)); err == nil {
		t.Error("accepted an oversized request")
	}
}

// FuzzGuestRequest: whatever arrives on the control socket gets a request
// that passed every check, or an error; never a panic. An accepted request
// survives a round trip through JSON.
func FuzzGuestRequest(f *testing.F) {
	f.Add([]byte(`{"op":"status"}`))
	f.Add([]byte(`{"op":"check"}`))
	f.Add([]byte(`{"op":"migrate","migrate":{"to":"[::1]:7000","server_name":"n2","transport":"quic","downtime_ms":100,"timeout_ms":600000,"streams":8,"compress":"zstd","bandwidth_bytes_per_second":1000,"max_rounds":30,"no_auto_converge":true}}`))
	f.Fuzz(func(t *testing.T, line []byte) {
		r, err := parseGuestRequest(line)
		if err != nil {
			return
		}
		b, err := json.Marshal(r)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := parseGuestRequest(b); err != nil {
			t.Fatalf("accepted %q, but not its re-encoding %s: %v", line, b, err)
		}
	})
}
