package nbdbench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
)

// Main runs the benchmark the way its commands do: SIGINT/SIGTERM stop it
// cleanly (servers killed, files removed, the runs done so far reported),
// the markdown report (or, with asJSON, the JSON one) goes to stdout, and
// the markdown also to outPath when it is not empty.
func Main(ctx context.Context, cfg Config, asJSON bool, outPath string, stdout io.Writer) error {
	ctx, stop := signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
	defer stop()
	rep, err := Run(ctx, cfg)
	if err != nil {
		return err
	}
	md := rep.Markdown()
	if asJSON {
		b, err := rep.JSON()
		if err != nil {
			return err
		}
		fmt.Fprintf(stdout, "%s\n", b)
	} else {
		fmt.Fprint(stdout, md)
	}
	if outPath != "" {
		if err := os.WriteFile(outPath, []byte(md), 0o644); err != nil {
			return err
		}
	}
	if rep.Interrupted {
		return errors.New("interrupted: the report holds the runs done so far")
	}
	return nil
}

// ParseSize reads a size such as 1G, 512M or 1073741824 (K, M, G, T are
// powers of 1024; a trailing B or iB is allowed).
func ParseSize(s string) (int64, error) {
	u := strings.ToUpper(strings.TrimSpace(s))
	u = strings.TrimSuffix(strings.TrimSuffix(u, "IB"), "B")
	mult := int64(1)
	if n := len(u); n > 0 {
		switch u[n-1] {
		case 'K':
			mult = 1 << 10
		case 'M':
			mult = 1 << 20
		case 'G':
			mult = 1 << 30
		case 'T':
			mult = 1 << 40
		}
		if mult != 1 {
			u = u[:n-1]
		}
	}
	v, err := strconv.ParseInt(u, 10, 64)
	if err != nil || v <= 0 || v > (1<<62)/mult {
		return 0, fmt.Errorf("size %q: want a positive number with an optional K, M, G or T suffix", s)
	}
	return v * mult, nil
}
