package replbench

// The cost floor of a replicated write on one machine: what the kernel
// and the cipher charge for the copies a 3-replica write cannot avoid
// when all three replicas share the machine's cores, measured one by one
// in this process. Compare the sum with BenchmarkPrimaryWrite's CPU per
// write to see how much is left to win in paddock's own code:
//
//	go test ./bench/replbench -run XXX -bench Floor -benchtime 4000x

import (
	"crypto/rand"
	"crypto/tls"
	"hash/crc32"
	"io"
	"net"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/paddock-io/paddock/internal/batchconn"
	"github.com/paddock-io/paddock/internal/testcert"
)

func BenchmarkFloor(b *testing.B) {
	const blockBytes = 256 << 10
	const fileBytes = 256 << 20
	buf := make([]byte, blockBytes)
	rand.Read(buf)
	report := func(b *testing.B, cpu0 int64) {
		b.ReportMetric(float64(processCPU().Microseconds()-cpu0)/float64(b.N), "cpu-µs/op")
	}
	// One copy into the page cache of tmpfs, as each replica's pwrite
	// does (the file is filled first: a volume being rewritten).
	b.Run("pwrite-256k", func(b *testing.B) {
		f, err := os.Create(filepath.Join(inprocDir(b), "data"))
		if err != nil {
			b.Fatal(err)
		}
		defer f.Close()
		for off := int64(0); off < fileBytes; off += blockBytes {
			unix.Pwrite(int(f.Fd()), buf, off)
		}
		b.SetBytes(blockBytes)
		cpu0 := processCPU().Microseconds()
		b.ResetTimer()
		for i := 0; i < b.N; i++ {
			if _, err := unix.Pwrite(int(f.Fd()), buf, int64(i%(fileBytes/blockBytes))*blockBytes); err != nil {
				b.Fatal(err)
			}
		}
		report(b, cpu0)
	})
	// The checksum of one block, computed once per pass over the data.
	b.Run("crc32c-256k", func(b *testing.B) {
		tab := crc32.MakeTable(crc32.Castagnoli)
		b.SetBytes(blockBytes)
		cpu0 := processCPU().Microseconds()
		for i := 0; i < b.N; i++ {
			crc32.Checksum(buf, tab)
		}
		report(b, cpu0)
	})
	// One transfer to a peer over loopback: the sender's and the
	// receiver's CPU, plain and in TLS 1.3 (AES-GCM), as the links carry.
	for _, mode := range []string{"tcp", "tls", "tls-batched"} {
		useTLS, batched := mode != "tcp", mode == "tls-batched"
		name := mode + "-256k"
		b.Run(name, func(b *testing.B) {
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				b.Fatal(err)
			}
			defer ln.Close()
			cert, pool := testcert.SelfSigned(b, "bench")
			var wg sync.WaitGroup
			wg.Add(1)
			go func() {
				defer wg.Done()
				c, err := ln.Accept()
				if err != nil {
					return
				}
				if batched {
					c = batchconn.Wrap(c, 0)
				}
				if useTLS {
					c = tls.Server(c, &tls.Config{Certificates: []tls.Certificate{cert}})
				}
				defer c.Close()
				got := make([]byte, blockBytes)
				for {
					if _, err := io.ReadFull(c, got); err != nil {
						return
					}
				}
			}()
			c, err := net.Dial("tcp", ln.Addr().String())
			if err != nil {
				b.Fatal(err)
			}
			if batched {
				c = batchconn.Wrap(c, 0)
			}
			if useTLS {
				tc := tls.Client(c, &tls.Config{RootCAs: pool, ServerName: "bench"})
				if err := tc.Handshake(); err != nil {
					b.Fatal(err)
				}
				c = tc
			}
			b.SetBytes(blockBytes)
			cpu0 := processCPU().Microseconds()
			b.ResetTimer()
			batch := batchconn.Of(c)
			for i := 0; i < b.N; i++ {
				if batch != nil {
					batch.Begin()
				}
				if _, err := c.Write(buf); err != nil {
					b.Fatal(err)
				}
				if batch != nil {
					if err := batch.End(); err != nil {
						b.Fatal(err)
					}
				}
			}
			c.Close()
			wg.Wait()
			b.StopTimer()
			report(b, cpu0)
		})
	}
}
