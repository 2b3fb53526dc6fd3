// Command gonbdserver serves a file with github.com/pojntfx/go-nbd's
// server (v0.3.2, server.Handle over backend.FileBackend): a benchmark peer
// for bench/nbdbench, never part of paddock.
//
//	gonbdserver --file disk.img --listen 127.0.0.1:10809 --name bench [--delay 1ms]
//
// go-nbd serves one request at a time per connection, advertises neither
// FLUSH nor FUA, and takes a write lock on the whole file for every write:
// it is measured as it is, with nothing tuned.
package main

import (
	"errors"
	"flag"
	"io"
	"log"
	"net"
	"os"
	"time"

	"github.com/pojntfx/go-nbd/pkg/backend"
	"github.com/pojntfx/go-nbd/pkg/server"
)

// delayBackend adds a fixed latency to every read and write, like paddock
// serve --backend-delay and nbdkit's delay filter (delay-read,
// delay-write).
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
	file := flag.String("file", "", "file to serve (must exist)")
	listen := flag.String("listen", "127.0.0.1:10809", "address to listen on")
	name := flag.String("name", "default", "export name")
	delay := flag.Duration("delay", 0, "latency added to each read and write (e.g. 1ms)")
	flag.Parse()
	log.SetPrefix("gonbdserver: ")
	if *file == "" {
		log.Fatal("--file is required")
	}
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
	opts := &server.Options{MinimumBlockSize: 1, PreferredBlockSize: 4096, MaximumBlockSize: 32 << 20, SupportsMultiConn: true}
	for {
		c, err := ln.Accept()
		if err != nil {
			log.Fatal(err)
		}
		go func() {
			defer c.Close()
			// A client that hangs up ends Handle with EOF: not worth a line.
			if err := server.Handle(c, exports, opts); err != nil && !errors.Is(err, io.EOF) && !errors.Is(err, io.ErrUnexpectedEOF) && !errors.Is(err, net.ErrClosed) {
				log.Println(err)
			}
		}()
	}
}
