// Command gonbdserver serves a file with github.com/pojntfx/go-nbd's server:
// a benchmark peer for bench/nbd, never part of paddock.
package main

import (
	"flag"
	"log"
	"net"
	"os"
	"time"

	"github.com/pojntfx/go-nbd/pkg/backend"
	"github.com/pojntfx/go-nbd/pkg/server"
)

// delayBackend adds a fixed latency to reads and writes.
type delayBackend struct {
	backend.Backend
	delay time.Duration
}

func (d *delayBackend) ReadAt(p []byte, off int64) (int, error) {
	time.Sleep(d.delay)
	return d.Backend.ReadAt(p, off)
}

func (d *delayBackend) WriteAt(p []byte, off int64) (int, error) {
	time.Sleep(d.delay)
	return d.Backend.WriteAt(p, off)
}

func main() {
	file := flag.String("file", "", "file to serve")
	listen := flag.String("listen", "127.0.0.1:10809", "address")
	name := flag.String("name", "default", "export name")
	delay := flag.Duration("delay", 0, "latency added to each read and write")
	flag.Parse()
	f, err := os.OpenFile(*file, os.O_RDWR, 0)
	if err != nil {
		log.Fatal(err)
	}
	var b backend.Backend = backend.NewFileBackend(f)
	if *delay > 0 {
		b = &delayBackend{Backend: b, delay: *delay}
	}
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		log.Fatal(err)
	}
	exports := []*server.Export{{Name: *name, Backend: b}}
	for {
		c, err := ln.Accept()
		if err != nil {
			log.Fatal(err)
		}
		go func() {
			defer c.Close()
			if err := server.Handle(c, exports, &server.Options{MinimumBlockSize: 1, PreferredBlockSize: 4096, MaximumBlockSize: 32 << 20, SupportsMultiConn: true}); err != nil {
				log.Println(err)
			}
		}()
	}
}
