package node

import (
	"fmt"
	"strings"
	"testing"
)

// TestGuestReceiveNames: a guest's name becomes a socket file name in the
// data dir, so anything that could leave the guests directory or hide a
// file is refused, as are sizes that are not whole pages and timeouts out
// of bounds.
func TestGuestReceiveNames(t *testing.T) {
	good := []string{"g1", "vm-100", "a.b_c", strings.Repeat("x", 64)}
	bad := []string{"", "../etc", "a/b", ".hidden", "..", "-x", "a b", "g\x00", strings.Repeat("x", 65), "é"}
	for _, n := range good {
		req := GuestReceiveRequest{Name: n, RAMBytes: 32 << 20}
		if err := checkGuestReceive(&req); err != nil {
			t.Errorf("name %q refused: %v", n, err)
		}
		if req.IdleTimeoutMs != DefaultReceiverIdleTimeoutMs {
			t.Errorf("default idle timeout %d", req.IdleTimeoutMs)
		}
	}
	for _, n := range bad {
		req := GuestReceiveRequest{Name: n, RAMBytes: 32 << 20}
		if err := checkGuestReceive(&req); err == nil {
			t.Errorf("name %q accepted", n)
		}
	}
	for _, req := range []GuestReceiveRequest{
		{Name: "g", RAMBytes: 0},
		{Name: "g", RAMBytes: -4096},
		{Name: "g", RAMBytes: 4097},
		{Name: "g", RAMBytes: maxGuestRAMBytes + guestPageBytes},
		{Name: "g", RAMBytes: 4096, Node: "../n2"},
		{Name: "g", RAMBytes: 4096, IdleTimeoutMs: 10},
		{Name: "g", RAMBytes: 4096, IdleTimeoutMs: maxReceiverIdleTimeoutMs + 1},
	} {
		if err := checkGuestReceive(&req); err == nil {
			t.Errorf("%+v accepted", req)
		}
	}
}

// TestGuestReceiverLimit: at most MaxGuestReceivers wait at once, at most
// maxGuestChildren children in all; a second request for a waiting
// receiver of the same size gets that one again, a different size or a
// name in use is refused.
func TestGuestReceiverLimit(t *testing.T) {
	children := map[string]*receiverChild{}
	add := func(name, state string, ram int64) {
		children[name] = &receiverChild{info: GuestReceiver{Name: name, State: state, RAMBytes: ram, Pid: 100 + len(children)}}
	}
	for i := range MaxGuestReceivers {
		req := GuestReceiveRequest{Name: fmt.Sprintf("w%d", i), RAMBytes: 4096}
		if reuse, err := admitReceiver(children, req); err != nil || reuse != nil {
			t.Fatalf("receiver %d of %d: %v, reuse %v", i+1, MaxGuestReceivers, err, reuse)
		}
		state := "waiting"
		if i == 0 {
			state = "starting" // starting ones count as well
		}
		add(req.Name, state, req.RAMBytes)
	}
	_, err := admitReceiver(children, GuestReceiveRequest{Name: "one-more", RAMBytes: 4096})
	if err == nil || !strings.Contains(err.Error(), fmt.Sprintf("at most %d", MaxGuestReceivers)) {
		t.Fatalf("receiver %d: %v", MaxGuestReceivers+1, err)
	}
	// The same name and size: the waiting one again, even when full.
	if reuse, err := admitReceiver(children, GuestReceiveRequest{Name: "w1", RAMBytes: 4096}); err != nil || reuse != children["w1"] {
		t.Fatalf("same receiver again: %v, %v", err, reuse)
	}
	if _, err := admitReceiver(children, GuestReceiveRequest{Name: "w1", RAMBytes: 8192}); err == nil {
		t.Fatal("a waiting receiver of another size was accepted")
	}
	if _, err := admitReceiver(children, GuestReceiveRequest{Name: "w0", RAMBytes: 4096}); err == nil {
		t.Fatal("a name whose receiver is starting was accepted")
	}
	// A receiver that got its guest no longer waits: room for one more.
	children["w1"].info.State = "running"
	if _, err := admitReceiver(children, GuestReceiveRequest{Name: "w1", RAMBytes: 4096}); err == nil || !strings.Contains(err.Error(), "running") {
		t.Fatalf("the name of a running guest: %v", err)
	}
	if reuse, err := admitReceiver(children, GuestReceiveRequest{Name: "next", RAMBytes: 4096}); err != nil || reuse != nil {
		t.Fatalf("after one was used: %v", err)
	}
	// Running guests count against the total.
	for i := len(children); i < maxGuestChildren; i++ {
		add(fmt.Sprintf("r%d", i), "running", 4096)
	}
	children["w2"].info.State = "running"
	if _, err := admitReceiver(children, GuestReceiveRequest{Name: "last", RAMBytes: 4096}); err == nil || !strings.Contains(err.Error(), fmt.Sprintf("at most %d", maxGuestChildren)) {
		t.Fatalf("child %d: %v", maxGuestChildren+1, err)
	}
}

// TestReceiverListen: the migration address and the ports after it when
// configured, else the storage IP and the fixed range, else a clear
// refusal.
func TestReceiverListen(t *testing.T) {
	ip, ports, err := receiverListen(NodeConfig{Name: "n1", StorageAddr: "10.0.0.1:7000", MigrationAddr: "10.1.0.1:9000"})
	if err != nil || ip.String() != "10.1.0.1" || len(ports) != MaxGuestReceivers || ports[0] != 9000 || ports[MaxGuestReceivers-1] != 9000+MaxGuestReceivers-1 {
		t.Fatalf("with a migration address: %v %v %v", ip, ports, err)
	}
	ip, ports, err = receiverListen(NodeConfig{Name: "n1", StorageAddr: "10.0.0.1:7000"})
	if err != nil || ip.String() != "10.0.0.1" || len(ports) != receiverPortCount || ports[0] != receiverPortBase {
		t.Fatalf("storage only: %v %v %v", ip, ports, err)
	}
	if _, _, err := receiverListen(NodeConfig{Name: "n1", ClusterAddr: "10.0.0.1:5405"}); err == nil || !strings.Contains(err.Error(), "--migration-addr") {
		t.Fatalf("no address: %v", err)
	}
}

func TestTailBuffer(t *testing.T) {
	b := newTailBuffer(8)
	b.Write([]byte("0123456"))
	b.Write([]byte("789abc"))
	if got := b.String(); got != "56789abc" {
		t.Fatalf("tail %q", got)
	}
}
