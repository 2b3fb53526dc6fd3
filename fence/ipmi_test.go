package fence

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// These tests drive the real fence_ipmilan (Debian's fence-agents, which
// runs ipmitool) against OpenIPMI's ipmi_sim, a BMC simulator speaking
// IPMI 2.0 (RMCP+) on a loopback UDP port. The simulated chassis's power
// is a file, switched by the chassis_control program ipmi_sim runs. .ci/run
// installs fence-agents, ipmitool and openipmi.

// bmc is a running ipmi_sim.
type bmc struct {
	port      int
	powerFile string
	user, pw  string
	cmd       *exec.Cmd
}

// lookOrSkip finds a program or skips the test; under CI (CI=true, where
// .ci/run installs them) a missing program fails it.
func lookOrSkip(t *testing.T, prog, pkg string) string {
	t.Helper()
	for _, dir := range []string{"/usr/sbin", "/usr/bin", "/sbin", "/bin", "/usr/local/sbin", "/usr/local/bin"} {
		if p := filepath.Join(dir, prog); isExecutable(p) == nil {
			return p
		}
	}
	if os.Getenv("CI") != "" {
		t.Fatalf("%s not installed (CI must install %s: see .ci/run)", prog, pkg)
	}
	t.Skipf("%s not installed (apt-get install %s)", prog, pkg)
	return ""
}

// startBMC runs ipmi_sim with one admin user and a chassis whose power
// starts on.
func startBMC(t *testing.T) *bmc {
	t.Helper()
	sim := lookOrSkip(t, "ipmi_sim", "openipmi")
	lookOrSkip(t, "ipmitool", "ipmitool")
	lookOrSkip(t, "fence_ipmilan", "fence-agents")
	dir := t.TempDir()
	b := &bmc{powerFile: filepath.Join(dir, "power"), user: "fencer", pw: fmt.Sprintf("pw%08d", time.Now().UnixNano()%100000000)} // IPMI passwords are at most 20 bytes
	if err := os.WriteFile(b.powerFile, []byte("1\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	// ipmi_sim calls it as "get power" (answer "power:0|1") and "set
	// power 0|1".
	chassis := writeScript(t, "chassis", fmt.Sprintf(`f=%q
cmd=$1; shift
case "$cmd" in
get) for p in "$@"; do [ "$p" = power ] && echo "power:$(cat "$f")"; done ;;
set) while [ $# -ge 2 ]; do [ "$1" = power ] && echo "$2" > "$f"; shift 2; done ;;
esac
`, b.powerFile))
	u, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	b.port = u.LocalAddr().(*net.UDPAddr).Port
	u.Close()
	conf := filepath.Join(dir, "lan.conf")
	err = os.WriteFile(conf, []byte(fmt.Sprintf(`name "paddock-test"
set_working_mc 0x20
  startlan 1
    addr 127.0.0.1 %d
    priv_limit admin
    allowed_auths_callback none md2 md5 straight
    allowed_auths_user none md2 md5 straight
    allowed_auths_operator none md2 md5 straight
    allowed_auths_admin none md2 md5 straight
    guid 0123456789abcdef0123456789abcdef
  endlan
  chassis_control %q
  user 2 true %q %q admin 10 none md2 md5 straight
`, b.port, chassis, b.user, b.pw)), 0o600)
	if err != nil {
		t.Fatal(err)
	}
	emu := filepath.Join(dir, "bmc.emu")
	if err := os.WriteFile(emu, []byte("mc_setbmc 0x20\nmc_add 0x20 0 no-device-sdrs 0x23 9 8 0x9f 0x1291 0xf02\nmc_enable 0x20\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	state := filepath.Join(dir, "state")
	if err := os.Mkdir(state, 0o755); err != nil {
		t.Fatal(err)
	}
	b.cmd = exec.Command(sim, "-c", conf, "-f", emu, "-s", state, "-n")
	var out strings.Builder
	b.cmd.Stdout, b.cmd.Stderr = &out, &out
	if err := b.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		b.cmd.Process.Kill()
		b.cmd.Wait()
		if t.Failed() {
			t.Logf("ipmi_sim output:\n%s", out.String())
		}
	})
	return b
}

func (b *bmc) device(password string) Device {
	return NewDevice("bmc", "fence_ipmilan", map[string]string{
		"ip": "127.0.0.1", "ipport": fmt.Sprint(b.port), "lanplus": "1",
		// Cipher suite 3 (RAKP-HMAC-SHA1, AES-CBC-128): without it ipmitool
		// first asks for the suites, which ipmi_sim does not answer, and
		// every call takes 14 s or more.
		"cipher":   "3",
		"username": b.user, "password": password,
	})
}

func (b *bmc) power(t *testing.T) string {
	t.Helper()
	p, err := os.ReadFile(b.powerFile)
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(p))
}

// waitBMC waits until the simulator answers a status.
func waitBMC(t *testing.T, r *AgentRunner, dev Device) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		p, _, err := r.Status(context.Background(), dev)
		if err == nil && p == PowerOn {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("ipmi_sim did not answer a status within 15 s: %q, %v", p, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// TestIPMILanOffStatusOn: off through the real agent and BMC protocol,
// verified by a status that says off, and the chassis really off; then on.
func TestIPMILanOffStatusOn(t *testing.T) {
	b := startBMC(t)
	r := fastRunner()
	dev := b.device(b.pw)
	waitBMC(t, r, dev)
	ctx := context.Background()

	runs, err := r.PowerOff(ctx, dev)
	if err != nil {
		t.Fatalf("PowerOff: %v (runs %+v)", err, runs)
	}
	if last := runs[len(runs)-1]; last.Action != ActionStatus || last.Power != PowerOff {
		t.Fatalf("PowerOff runs %+v: want a status saying off last", runs)
	}
	if p := b.power(t); p != "0" {
		t.Fatalf("the chassis power is %q after a verified off; want 0", p)
	}
	if p, _, err := r.Status(ctx, dev); err != nil || p != PowerOff {
		t.Fatalf("status after off: %q, %v", p, err)
	}
	if _, err := r.PowerOn(ctx, dev); err != nil {
		t.Fatalf("PowerOn: %v", err)
	}
	if p := b.power(t); p != "1" {
		t.Fatalf("the chassis power is %q after on; want 1", p)
	}
}

// TestIPMILanWrongPasswordFails: a refused login is a failed fence, the
// chassis stays on, and the password appears in no error.
func TestIPMILanWrongPasswordFails(t *testing.T) {
	b := startBMC(t)
	r := fastRunner()
	waitBMC(t, r, b.device(b.pw))
	wrong := "not-" + b.pw
	runs, err := r.PowerOff(context.Background(), b.device(wrong))
	if err == nil {
		t.Fatalf("PowerOff with a wrong password succeeded: %+v", runs)
	}
	if p := b.power(t); p != "1" {
		t.Fatalf("the chassis power is %q after a refused off; want 1", p)
	}
	for _, s := range []string{err.Error(), fmt.Sprintf("%+v", runs)} {
		if strings.Contains(s, wrong) || strings.Contains(s, b.pw) {
			t.Fatalf("a password leaked into %q", s)
		}
	}
}

// TestIPMILanBMCGoneFails: a BMC that stops answering is a failure within
// the device's timeout, never a success.
func TestIPMILanBMCGoneFails(t *testing.T) {
	b := startBMC(t)
	r := fastRunner()
	dev := b.device(b.pw)
	waitBMC(t, r, dev)
	b.cmd.Process.Kill()
	b.cmd.Wait()
	dev.TimeoutMs = 8000
	start := time.Now()
	runs, err := r.PowerOff(context.Background(), dev)
	if err == nil {
		t.Fatalf("PowerOff of an unreachable BMC succeeded: %+v", runs)
	}
	t.Logf("unreachable BMC: failed after %v: %v", time.Since(start).Round(time.Millisecond), err)
}
