package nbdbench

import (
	"fmt"
	"strconv"
	"time"
)

// Server is one NBD server under test.
type Server struct {
	Name string
	// Program is the executable that must exist (a path or a name
	// looked up in $PATH).
	Program string
	// Export is the export name in the URI ("" for nbdkit's default).
	Export string
	// Memory servers hold the data themselves: they get no file, and the
	// harness copies the file's contents into them before each run so
	// reads are of real data (with nbdcopy).
	Memory bool
	// Note is said once in the report about how this server is run.
	Note string
	// args is the command line serving file (or sizeBytes of memory) on
	// 127.0.0.1:port, with delay added to backend calls; ok is false when
	// the server cannot add a delay.
	args func(file string, port int, sizeBytes int64, delay time.Duration) (argv []string, ok bool)
}

// Args is the server's command line; ok is false when it cannot run with
// this delay.
func (s Server) Args(file string, port int, sizeBytes int64, delay time.Duration) ([]string, bool) {
	return s.args(file, port, sizeBytes, delay)
}

// ServerNames are the servers in report order; paddock comes first.
var ServerNames = []string{"paddock", "qemu-nbd", "nbdkit-file", "nbdkit-memory", "go-nbd"}

// PaddockName is the server whose ratio to the best peer is reported.
const PaddockName = "paddock"

// GoNBDName is the server the 1 ms row is compared with.
const GoNBDName = "go-nbd"

// exportName is the export name given to the servers that take one.
const exportName = "bench"

// Servers returns the servers under test, paddock and the go-nbd wrapper
// being run from the given executables.
func Servers(paddockBin, gonbdBin string) []Server {
	addr := func(port int) string { return fmt.Sprintf("127.0.0.1:%d", port) }
	return []Server{
		{
			Name: "paddock", Program: paddockBin, Export: exportName,
			Note: "`paddock serve --file F --listen A --name bench --log-level warn`, `--backend-delay 1ms` for the 1 ms rows.",
			args: func(file string, port int, _ int64, delay time.Duration) ([]string, bool) {
				a := []string{paddockBin, "serve", "--file", file, "--listen", addr(port), "--name", exportName, "--log-level", "warn"}
				if delay > 0 {
					a = append(a, "--backend-delay", delay.String())
				}
				return a, true
			},
		},
		{
			Name: "qemu-nbd", Program: "qemu-nbd", Export: exportName,
			Note: "`qemu-nbd -f raw -t --shared=8 --cache=writeback --aio=threads --discard=unmap`: tmpfs has no O_DIRECT, so `--cache=none` is impossible; " +
				"writeback (the page cache, like every other server here) is used. qemu-nbd has no latency knob: n/a on the 1 ms rows.",
			args: func(file string, port int, _ int64, delay time.Duration) ([]string, bool) {
				if delay > 0 {
					return nil, false
				}
				return []string{"qemu-nbd", "-f", "raw", "-t", "-b", "127.0.0.1", "-p", strconv.Itoa(port), "-x", exportName,
					"--shared=8", "--cache=writeback", "--aio=threads", "--discard=unmap", file}, true
			},
		},
		{
			Name: "nbdkit-file", Program: "nbdkit",
			Note: "`nbdkit -f -i 127.0.0.1 -p P file F` (default 16 threads); `--filter=delay ... delay-read=1ms delay-write=1ms` for the 1 ms rows.",
			args: func(file string, port int, _ int64, delay time.Duration) ([]string, bool) {
				a := []string{"nbdkit", "-f", "-i", "127.0.0.1", "-p", strconv.Itoa(port)}
				if delay > 0 {
					a = append(a, "--filter=delay")
				}
				a = append(a, "file", file)
				if delay > 0 {
					ms := strconv.FormatInt(delay.Milliseconds(), 10) + "ms"
					a = append(a, "delay-read="+ms, "delay-write="+ms)
				}
				return a, true
			},
		},
		{
			Name: "nbdkit-memory", Program: "nbdkit", Memory: true,
			Note: "`nbdkit -f -i 127.0.0.1 -p P memory SIZE`, filled with the file's data by nbdcopy before each run (so its RSS includes the data). " +
				"It is its own backend: no 1 ms rows.",
			args: func(_ string, port int, sizeBytes int64, delay time.Duration) ([]string, bool) {
				if delay > 0 {
					return nil, false
				}
				return []string{"nbdkit", "-f", "-i", "127.0.0.1", "-p", strconv.Itoa(port), "memory", strconv.FormatInt(sizeBytes, 10)}, true
			},
		},
		{
			Name: "go-nbd", Program: gonbdBin, Export: exportName,
			Note: "bench/gonbdserver: github.com/pojntfx/go-nbd v0.3.2's server.Handle over its FileBackend; `--delay 1ms` sleeps before each read and write.",
			args: func(file string, port int, _ int64, delay time.Duration) ([]string, bool) {
				a := []string{gonbdBin, "--file", file, "--listen", addr(port), "--name", exportName}
				if delay > 0 {
					a = append(a, "--delay", delay.String())
				}
				return a, true
			},
		},
	}
}
