package replbench

// An in-process harness of the replication path for profiling with Go's
// own tools: a blockrep.Primary and its peers' blockrep.Servers in this
// process, over loopback TCP with or without TLS (the daemon uses mutual
// TLS), data on tmpfs. It leaves out the NBD server, the daemon and the
// processes, so what a CPU profile shows is the write path itself:
//
//	go test ./bench/replbench -run XXX -bench 'PrimaryWrite/256k.*/r3/tls' -benchtime 2s -cpuprofile /tmp/cpu.out
//	go tool pprof -top /tmp/cpu.out

import (
	"context"
	"crypto/rand"
	"crypto/tls"

	"encoding/binary"
	"fmt"
	"io"
	"log/slog"

	"net"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/paddock-io/paddock/blockrep"
	"github.com/paddock-io/paddock/internal/batchconn"
	"github.com/paddock-io/paddock/internal/testcert"
)

const inprocVolume = 9

type inprocCluster struct {
	prim  *blockrep.Primary
	close func()
}

func selfSignedTLS(tb testing.TB) tls.Certificate {
	cert, _ := testcert.SelfSigned(tb, "bench")
	return cert
}

// startInproc opens n replicas of one volume under dir, serves nodes 2..n
// on loopback listeners and promotes node 1.
func startInproc(tb testing.TB, dir string, n int, sizeBytes int64, useTLS bool) *inprocCluster {
	var ids []blockrep.NodeID
	for i := 1; i <= n; i++ {
		ids = append(ids, blockrep.NodeID(i))
	}
	cert := selfSignedTLS(tb)
	ctx, cancel := context.WithCancel(context.Background())
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	var reps []*blockrep.Replica
	var lns []net.Listener
	addrs := map[blockrep.NodeID]string{}
	for _, id := range ids {
		rep, err := blockrep.OpenReplica(filepath.Join(dir, fmt.Sprint(id)), blockrep.ReplicaOptions{Self: id, VolumeID: inprocVolume, SizeBytes: sizeBytes, Members: ids})
		if err != nil {
			tb.Fatal(err)
		}
		reps = append(reps, rep)
		if id == 1 {
			continue
		}
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			tb.Fatal(err)
		}
		lns = append(lns, ln)
		addrs[id] = ln.Addr().String()
		srv := &blockrep.Server{Self: id, Lookup: func(v uint64) blockrep.Handler {
			if v == inprocVolume {
				return rep
			}
			return nil
		}, Logger: quiet}
		go func() {
			for {
				conn, err := ln.Accept()
				if err != nil {
					return
				}
				if useTLS {
					conn = tls.Server(batchconn.Wrap(conn, 0), &tls.Config{Certificates: []tls.Certificate{cert}})
				}
				go func() {
					var b [4]byte
					if _, err := io.ReadFull(conn, b[:]); err != nil {
						conn.Close()
						return
					}
					srv.ServeConn(ctx, conn, blockrep.NodeID(binary.BigEndian.Uint32(b[:])))
				}()
			}
		}()
	}
	dial := func(ctx context.Context, peer blockrep.NodeID) (net.Conn, error) {
		var d net.Dialer
		conn, err := d.DialContext(ctx, "tcp", addrs[peer])
		if err != nil {
			return nil, err
		}
		if useTLS {
			conn = tls.Client(batchconn.Wrap(conn, 0), &tls.Config{InsecureSkipVerify: true})
		}
		if _, err := conn.Write(binary.BigEndian.AppendUint32(nil, 1)); err != nil {
			conn.Close()
			return nil, err
		}
		return conn, nil
	}
	p, err := blockrep.Promote(ctx, blockrep.PrimaryConfig{Self: 1, VolumeID: inprocVolume, Replicas: ids, Local: reps[0], Dial: dial,
		PeerTimeout: 10 * time.Second, OnNoQuorum: blockrep.IOError, Logger: quiet})
	if err != nil {
		tb.Fatal(err)
	}
	// Wait until every peer is a member (connected under the epoch).
	deadline := time.Now().Add(20 * time.Second)
	for {
		st := p.Status()
		if len(st.Members) == n {
			break
		}
		if time.Now().After(deadline) {
			tb.Fatalf("members %v after 20s", st.Members)
		}
		time.Sleep(10 * time.Millisecond)
	}
	return &inprocCluster{prim: p, close: func() {
		p.Close()
		cancel()
		for _, ln := range lns {
			ln.Close()
		}
		time.Sleep(20 * time.Millisecond)
		for _, r := range reps {
			r.Close()
		}
	}}
}

func inprocDir(tb testing.TB) string {
	parent := ""
	if st, err := os.Stat(DefaultDir); err == nil && st.IsDir() {
		parent = DefaultDir
	}
	dir, err := os.MkdirTemp(parent, "paddock-replbench-inproc-")
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

// TestInprocHarness checks the harness itself quickly: a write through a
// 3-replica primary over TLS reaches every replica.
func TestInprocHarness(t *testing.T) {
	c := startInproc(t, inprocDir(t), 3, 4<<20, true)
	defer c.close()
	buf := make([]byte, 64<<10)
	rand.Read(buf)
	if err := c.prim.WriteAt(buf, 1<<20, true); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len(buf))
	if err := c.prim.ReadAt(got, 1<<20); err != nil || string(got) != string(buf) {
		t.Fatalf("read back: %v", err)
	}
	if st := c.prim.Status(); len(st.Members) != 3 {
		t.Fatalf("members %v", st.Members)
	}
}

// processCPU is this process's user+system CPU time so far.
func processCPU() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkPrimaryWrite writes through a Primary with qd writers at once,
// sequential offsets (wrapping), for 1, 2 and 3 replicas, with and
// without TLS on the peer links.
func BenchmarkPrimaryWrite(b *testing.B) {
	const sizeBytes = 256 << 20
	for _, w := range []struct {
		name string
		bs   int64
		qd   int
	}{{"256k-qd16", 256 << 10, 16}, {"4k-qd32", 4 << 10, 32}} {
		for _, n := range []int{1, 2, 3} {
			for _, useTLS := range []bool{false, true} {
				mode := "plain"
				if useTLS {
					mode = "tls"
				}
				b.Run(fmt.Sprintf("%s/r%d/%s", w.name, n, mode), func(b *testing.B) {
					c := startInproc(b, inprocDir(b), n, sizeBytes, useTLS)
					defer c.close()
					buf := make([]byte, w.bs)
					rand.Read(buf)
					slots := sizeBytes / w.bs
					b.SetBytes(w.bs)
					cpu0 := processCPU()
					b.ResetTimer()
					var next atomic.Int64
					var failed atomic.Value
					var wg sync.WaitGroup
					for q := 0; q < w.qd; q++ {
						wg.Add(1)
						go func() {
							defer wg.Done()
							for {
								i := next.Add(1) - 1
								if i >= int64(b.N) {
									return
								}
								if err := c.prim.WriteAt(buf, (i%slots)*w.bs, false); err != nil {
									failed.Store(err)
									return
								}
							}
						}()
					}
					wg.Wait()
					b.StopTimer()
					// CPU per write holds up better than time per write
					// on a machine shared with other work.
					b.ReportMetric(float64((processCPU()-cpu0).Microseconds())/float64(b.N), "cpu-µs/op")
					if err, _ := failed.Load().(error); err != nil {
						b.Fatal(err)
					}
				})
			}
		}
	}
}
