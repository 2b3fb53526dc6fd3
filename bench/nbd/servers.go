package main

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// server is one NBD server under test.
type server struct {
	Name string
	// Args builds the command for a file, a port and a delay (0: none);
	// ok false: this server cannot run this workload.
	Args func(file string, port int, size int64, delay time.Duration) (argv []string, export string, ok bool)
	Need string // the program that must be installed
}

func servers(paddock, gonbd string) []server {
	return []server{
		{Name: "paddock", Need: paddock, Args: func(file string, port int, _ int64, delay time.Duration) ([]string, string, bool) {
			a := []string{paddock, "serve", "--file", file, "--listen", fmt.Sprintf("127.0.0.1:%d", port), "--name", "bench", "--log-level", "warn"}
			if delay > 0 {
				a = append(a, "--backend-delay", delay.String())
			}
			return a, "bench", true
		}},
		{Name: "qemu-nbd", Need: "qemu-nbd", Args: func(file string, port int, _ int64, delay time.Duration) ([]string, string, bool) {
			if delay > 0 {
				return nil, "", false // qemu-nbd has no latency knob
			}
			// tmpfs has no O_DIRECT: writeback cache, threads for aio;
			// --shared lets fio's connection in alongside others.
			return []string{"qemu-nbd", "-f", "raw", "-t", "-b", "127.0.0.1", "-p", strconv.Itoa(port), "-x", "bench",
				"--cache=writeback", "--aio=threads", "--shared=8", "--discard=unmap", file}, "bench", true
		}},
		{Name: "nbdkit-file", Need: "nbdkit", Args: func(file string, port int, _ int64, delay time.Duration) ([]string, string, bool) {
			a := []string{"nbdkit", "-f", "-i", "127.0.0.1", "-p", strconv.Itoa(port)}
			if delay > 0 {
				a = append(a, "--filter=delay")
			}
			a = append(a, "file", file)
			if delay > 0 {
				a = append(a, "delay-read="+ms(delay), "delay-write="+ms(delay))
			}
			return a, "", true
		}},
		{Name: "nbdkit-memory", Need: "nbdkit", Args: func(_ string, port int, size int64, delay time.Duration) ([]string, string, bool) {
			if delay > 0 {
				return nil, "", false
			}
			return []string{"nbdkit", "-f", "-i", "127.0.0.1", "-p", strconv.Itoa(port), "memory", strconv.FormatInt(size, 10)}, "", true
		}},
		{Name: "go-nbd", Need: gonbd, Args: func(file string, port int, _ int64, delay time.Duration) ([]string, string, bool) {
			a := []string{gonbd, "--file", file, "--listen", fmt.Sprintf("127.0.0.1:%d", port), "--name", "bench"}
			if delay > 0 {
				a = append(a, "--delay", delay.String())
			}
			return a, "bench", true
		}},
	}
}

func ms(d time.Duration) string { return strconv.FormatInt(d.Milliseconds(), 10) + "ms" }

// running is a started server process.
type running struct {
	cmd *exec.Cmd
	uri string
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// start runs argv and waits until the port accepts connections.
func start(argv []string, port int, export string) (*running, error) {
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stdout, cmd.Stderr = nil, os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	for i := 0; i < 100; i++ {
		if c, err := net.Dial("tcp", addr); err == nil {
			c.Close()
			return &running{cmd: cmd, uri: "nbd://" + addr + "/" + export}, nil
		}
		time.Sleep(50 * time.Millisecond)
	}
	cmd.Process.Kill()
	cmd.Wait()
	return nil, fmt.Errorf("%s did not listen on %s", argv[0], addr)
}

// peakRSS is the process's VmHWM in bytes.
func (r *running) peakRSS() int64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", r.cmd.Process.Pid))
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(line, "VmHWM:") {
			f := strings.Fields(line)
			if len(f) >= 2 {
				kb, _ := strconv.ParseInt(f[1], 10, 64)
				return kb * 1024
			}
		}
	}
	return 0
}

func (r *running) stop() {
	r.cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan struct{})
	go func() { r.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(3 * time.Second):
		r.cmd.Process.Kill()
		<-done
	}
}
