package nbdbench

import (
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strings"
)

// Machine describes where the benchmark ran.
type Machine struct {
	Cores         int    `json:"cores"`
	CPU           string `json:"cpu"`
	MemTotalBytes int64  `json:"mem_total_bytes"`
	Kernel        string `json:"kernel"`
	Fio           string `json:"fio"`
	QemuNBD       string `json:"qemu_nbd,omitempty"`
	Nbdkit        string `json:"nbdkit,omitempty"`
	Libnbd        string `json:"libnbd,omitempty"`
	Go            string `json:"go"`
	// LoadAvg is /proc/loadavg's 1, 5 and 15 minute figures at the start:
	// other work on the machine shows up here.
	LoadAvg string `json:"load_avg"`
}

func (m Machine) String() string {
	parts := []string{fmt.Sprintf("%d cores", m.Cores)}
	if m.CPU != "" {
		parts[0] += " (" + m.CPU + ")"
	}
	if m.MemTotalBytes > 0 {
		parts = append(parts, fmt.Sprintf("%.1f GiB RAM", float64(m.MemTotalBytes)/(1<<30)))
	}
	for _, s := range []string{"Linux " + m.Kernel, m.Fio, m.QemuNBD, m.Nbdkit, m.Libnbd, m.Go} {
		if strings.TrimSpace(s) != "" && s != "Linux " {
			parts = append(parts, s)
		}
	}
	if m.LoadAvg != "" {
		parts = append(parts, "load average at start "+m.LoadAvg)
	}
	return strings.Join(parts, ", ")
}

func describeMachine(fio string) Machine {
	m := Machine{Cores: runtime.NumCPU(), Fio: fio, Go: runtime.Version()}
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if k, v, ok := strings.Cut(l, ":"); ok && strings.TrimSpace(k) == "model name" {
				m.CPU = strings.TrimSpace(v)
				break
			}
		}
	}
	if b, err := os.ReadFile("/proc/meminfo"); err == nil {
		var kb int64
		fmt.Sscanf(string(b), "MemTotal: %d kB", &kb)
		m.MemTotalBytes = kb << 10
	}
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		m.Kernel = strings.TrimSpace(string(b))
	}
	if b, err := os.ReadFile("/proc/loadavg"); err == nil {
		if fs := strings.Fields(string(b)); len(fs) >= 3 {
			m.LoadAvg = strings.Join(fs[:3], " ")
		}
	}
	m.QemuNBD = firstLine("qemu-nbd", "--version")
	m.Nbdkit = firstLine("nbdkit", "--version")
	m.Libnbd = firstLine("nbdcopy", "--version")
	return m
}

// firstLine is the first line a program prints, "" if it cannot run.
func firstLine(prog string, args ...string) string {
	out, err := exec.Command(prog, args...).Output()
	if err != nil {
		return ""
	}
	l, _, _ := strings.Cut(string(out), "\n")
	return strings.TrimSpace(l)
}
