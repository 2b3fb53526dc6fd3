// Command nbd is paddock's NBD benchmark (package bench/nbdbench), for
// running without the paddock binary:
//
//	go run ./bench/nbd --runtime 10s --reps 3 --out /tmp/bench-nbd.md
//
// "paddock bench nbd" takes the same flags.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"strings"

	"github.com/paddock-io/paddock/bench/nbdbench"
)

func main() {
	cfg := nbdbench.DefaultConfig()
	flag.DurationVar(&cfg.Runtime, "runtime", cfg.Runtime, "fio's measured time per run")
	flag.DurationVar(&cfg.Ramp, "ramp", cfg.Ramp, "fio's ramp time before each measured run")
	flag.IntVar(&cfg.Reps, "reps", cfg.Reps, "repetitions of every run (the median is reported)")
	size := flag.String("size", "1G", "size of the exported file (K, M, G suffixes)")
	flag.StringVar(&cfg.Servers, "servers", "", "comma-separated subset of: "+strings.Join(nbdbench.ServerNames, ","))
	flag.StringVar(&cfg.Workloads, "workloads", "", "comma-separated subset of: "+workloadNames())
	flag.StringVar(&cfg.Dir, "dir", cfg.Dir, "directory for the exported file (tmpfs)")
	flag.StringVar(&cfg.PaddockBin, "paddock", "", "paddock executable (default: go build ./cmd/paddock)")
	flag.StringVar(&cfg.GoNBDBin, "gonbd", "", "go-nbd wrapper executable (default: go build ./bench/gonbdserver)")
	asJSON := flag.Bool("json", false, "print the results as JSON instead of markdown")
	out := flag.String("out", "", "also write the markdown report to this file")
	flag.Parse()
	var err error
	if cfg.SizeBytes, err = nbdbench.ParseSize(*size); err != nil {
		fail(err)
	}
	cfg.Progress = os.Stderr
	cfg.Command = "go run ./bench/nbd"
	flag.Visit(func(f *flag.Flag) { cfg.Command += " --" + f.Name + "=" + f.Value.String() })
	if err := nbdbench.Main(context.Background(), cfg, *asJSON, *out, os.Stdout); err != nil {
		fail(err)
	}
}

func workloadNames() string {
	var ns []string
	for _, w := range nbdbench.Workloads {
		ns = append(ns, w.Name)
	}
	return strings.Join(ns, ",")
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "bench nbd:", err)
	os.Exit(1)
}
