package migrate

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"sync"
	"testing"
	"time"
)

type testPKI struct {
	ca       *SelfSignedCA
	src, dst TLSIdentity
}

var (
	pkiOnce sync.Once
	pki     testPKI
	pkiErr  error
)

func newTestPKI(t testing.TB) testPKI {
	pkiOnce.Do(func() {
		pki.ca, pkiErr = NewSelfSignedCA()
		if pkiErr != nil {
			return
		}
		if pki.src, pkiErr = pki.ca.Identity("node-a", "localhost", "127.0.0.1"); pkiErr != nil {
			return
		}
		pki.dst, pkiErr = pki.ca.Identity("node-b", "localhost", "127.0.0.1")
	})
	if pkiErr != nil {
		t.Fatal(pkiErr)
	}
	return pki
}

var transports = []string{TransportQUIC, TransportTCP}

// connect returns a dialed and an accepted Conn over transport on loopback.
func connect(t testing.TB, transport string, streams int) (src, dst Conn) {
	p := newTestPKI(t)
	l, err := Listen(transport, "127.0.0.1:0", p.dst)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	accepted := make(chan Conn, 1)
	go func() {
		c, err := l.Accept(ctx)
		if err != nil {
			t.Error(err)
		}
		accepted <- c
	}()
	src, err = Dial(ctx, transport, l.Addr().String(), "localhost", p.src, streams)
	if err != nil {
		t.Fatal(err)
	}
	dst = <-accepted
	if dst == nil {
		t.FailNow()
	}
	t.Cleanup(func() { src.Close(); dst.Close() })
	return src, dst
}

func TestTransportStreams(t *testing.T) {
	for _, tr := range transports {
		t.Run(tr, func(t *testing.T) {
			const streams = 4
			src, dst := connect(t, tr, streams)
			if len(src.Pages()) != streams || len(dst.Pages()) != streams || src.Transport() != tr {
				t.Fatalf("streams %d/%d", len(src.Pages()), len(dst.Pages()))
			}
			if src.PeerCertificate().Subject.CommonName != "node-b" || dst.PeerCertificate().Subject.CommonName != "node-a" {
				t.Fatal("peer certificates")
			}
			if tr == TransportQUIC {
				t.Logf("GSO: %v", QUICGSO(src))
			}
			// Each page stream carries its own pattern; the receiver
			// must see each on the stream of the same index, whole,
			// then EOF.
			const perStream = 2 << 20
			var wg sync.WaitGroup
			sums := make([][32]byte, streams)
			for i, s := range src.Pages() {
				wg.Add(1)
				go func() {
					defer wg.Done()
					rng := rand.New(rand.NewPCG(uint64(i), 0))
					buf := make([]byte, perStream)
					for k := range buf {
						buf[k] = byte(rng.Uint32())
					}
					sums[i] = sha256.Sum256(buf)
					if _, err := s.Write(buf); err != nil {
						t.Error(err)
					}
					if err := s.CloseWrite(); err != nil {
						t.Error(err)
					}
				}()
			}
			got := make([][32]byte, streams)
			for i, s := range dst.Pages() {
				wg.Add(1)
				go func() {
					defer wg.Done()
					b, err := io.ReadAll(s)
					if err != nil {
						t.Error(err)
					}
					if len(b) != perStream {
						t.Errorf("stream %d: %d bytes", i, len(b))
					}
					got[i] = sha256.Sum256(b)
				}()
			}
			// The control stream works both ways meanwhile.
			if _, err := src.Control().Write([]byte("hello")); err != nil {
				t.Fatal(err)
			}
			buf := make([]byte, 5)
			if _, err := io.ReadFull(dst.Control(), buf); err != nil || string(buf) != "hello" {
				t.Fatalf("control: %q %v", buf, err)
			}
			if _, err := dst.Control().Write([]byte("ack")); err != nil {
				t.Fatal(err)
			}
			if _, err := io.ReadFull(src.Control(), buf[:3]); err != nil || string(buf[:3]) != "ack" {
				t.Fatalf("control back: %q %v", buf[:3], err)
			}
			wg.Wait()
			if fmt.Sprint(sums) != fmt.Sprint(got) {
				t.Fatal("a page stream's bytes arrived changed or on another stream")
			}
			// Page streams are one-way.
			if _, err := src.Pages()[0].Read(buf); err == nil {
				t.Fatal("read from a source page stream")
			}
			if _, err := dst.Pages()[0].Write(buf); err == nil {
				t.Fatal("write to a destination page stream")
			}
		})
	}
}

// Abort on one side makes the other side's reads fail promptly.
func TestTransportAbort(t *testing.T) {
	for _, tr := range transports {
		t.Run(tr, func(t *testing.T) {
			src, dst := connect(t, tr, 2)
			errc := make(chan error, 1)
			go func() {
				_, err := io.ReadAll(dst.Pages()[1])
				errc <- err
			}()
			src.Pages()[1].Write(make([]byte, 1000))
			time.Sleep(20 * time.Millisecond)
			start := time.Now()
			src.Abort("cancelled by test")
			select {
			case err := <-errc:
				if err == nil {
					t.Fatal("read after abort ended cleanly")
				}
				t.Logf("after %v: %v", time.Since(start), err)
			case <-time.After(5 * time.Second):
				t.Fatal("reader still blocked 5 s after abort")
			}
		})
	}
}

// Only peers with a certificate from the CA get in, and the client checks
// the server's name.
func TestTransportMutualAuth(t *testing.T) {
	p := newTestPKI(t)
	other, err := NewSelfSignedCA()
	if err != nil {
		t.Fatal(err)
	}
	stranger, err := other.Identity("stranger", "localhost", "127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	// A stranger who trusts our CA but holds a certificate from another.
	strangerTrusting := TLSIdentity{Cert: stranger.Cert, CAs: p.ca.pool}
	for _, tr := range transports {
		t.Run(tr, func(t *testing.T) {
			l, err := Listen(tr, "127.0.0.1:0", p.dst)
			if err != nil {
				t.Fatal(err)
			}
			defer l.Close()
			try := func(id TLSIdentity, serverName string) error {
				ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
				defer cancel()
				c, err := Dial(ctx, tr, l.Addr().String(), serverName, id, 1)
				if err != nil {
					return err
				}
				defer c.Close()
				// TLS 1.3 clients finish before the server has
				// checked their certificate: the refusal shows
				// as the connection never being accepted.
				actx, acancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
				defer acancel()
				if a, err := l.Accept(actx); err == nil {
					a.Close()
					return nil
				}
				return errors.New("not accepted")
			}
			if err := try(p.src, "localhost"); err != nil {
				t.Fatalf("good client: %v", err)
			}
			if err := try(strangerTrusting, "localhost"); err == nil {
				t.Fatal("client certificate from another CA accepted")
			}
			if err := try(stranger, "localhost"); err == nil {
				t.Fatal("client that does not trust the server's CA connected")
			}
			if err := try(p.src, "node-z.example"); err == nil {
				t.Fatal("server accepted under the wrong name")
			}
		})
	}
}

func TestSelfSignedCAPEM(t *testing.T) {
	p := newTestPKI(t)
	certPEM, keyPEM, err := p.ca.PEM()
	if err != nil {
		t.Fatal(err)
	}
	ca2, err := LoadSelfSignedCA(certPEM, keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	// A certificate from the reloaded CA is trusted by the original.
	id, err := ca2.Identity("node-c", "127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := id.Cert.Leaf.Verify(x509VerifyOptions(p.ca)); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadSelfSignedCA(keyPEM, certPEM); err == nil {
		t.Fatal("swapped PEM accepted")
	}
}

func TestStreamOf(t *testing.T) {
	counts := make([]int, 8)
	for p := uint64(0); p < 64*StreamChunkPages; p++ {
		counts[StreamOf(p, 8)]++
		if StreamOf(p, 8) != StreamOf(p/StreamChunkPages*StreamChunkPages, 8) {
			t.Fatal("a chunk split across streams")
		}
	}
	for _, c := range counts {
		if c != 8*StreamChunkPages {
			t.Fatalf("uneven spread %v", counts)
		}
	}
}

// The codec over a real transport: RAM in, frames over N streams, RAM out.
func TestTransportCarriesCodec(t *testing.T) {
	for _, tr := range transports {
		t.Run(tr, func(t *testing.T) {
			const streams, pages = 3, 4096
			src, dst := connect(t, tr, streams)
			ram := make([]byte, pages*PageBytes)
			fillRAM(rand.New(rand.NewPCG(1, 1)), ram)
			out := make([]byte, len(ram))
			var wg sync.WaitGroup
			for i := range streams {
				wg.Add(2)
				go func() {
					defer wg.Done()
					enc, _ := NewEncoder(src.Pages()[i], EncoderOptions{Compression: CompressAuto, DeltaCacheBytes: 1 << 20})
					for c := uint64(0); c < pages; c += StreamChunkPages {
						if StreamOf(c, streams) == i {
							enc.WriteRun(c, ram[c*PageBytes:(c+StreamChunkPages)*PageBytes])
						}
					}
					if err := enc.WriteRoundEnd(1, enc.Stats()); err != nil {
						t.Error(err)
					}
					src.Pages()[i].CloseWrite()
				}()
				go func() {
					defer wg.Done()
					dec := NewDecoder(dst.Pages()[i], pages)
					defer dec.Close()
					for {
						f, err := dec.Next()
						if err == io.EOF {
							return
						}
						if err != nil {
							t.Error(err)
							return
						}
						if f.Type == FramePages {
							if _, err := dec.ApplyPages(f, out); err != nil {
								t.Error(err)
								return
							}
						}
					}
				}()
			}
			wg.Wait()
			if !bytes.Equal(ram, out) {
				t.Fatal("RAM differs after transfer")
			}
		})
	}
}

// BenchmarkTransport measures loopback throughput of raw bytes over the
// page streams, 1 MiB writes.
func BenchmarkTransport(b *testing.B) {
	for _, tr := range transports {
		for _, streams := range []int{1, 4, 8} {
			b.Run(fmt.Sprintf("%s/streams=%d", tr, streams), func(b *testing.B) {
				src, dst := connect(b, tr, streams)
				const chunk = 1 << 20
				const perStreamPerOp = 16 << 20
				buf := make([]byte, chunk)
				var wg sync.WaitGroup
				for _, s := range dst.Pages() {
					wg.Add(1)
					go func() {
						defer wg.Done()
						io.Copy(io.Discard, s)
					}()
				}
				b.SetBytes(int64(streams * perStreamPerOp))
				for b.Loop() {
					var sw sync.WaitGroup
					for _, s := range src.Pages() {
						sw.Add(1)
						go func() {
							defer sw.Done()
							for n := 0; n < perStreamPerOp; n += chunk {
								if _, err := s.Write(buf); err != nil {
									b.Error(err)
									return
								}
							}
						}()
					}
					sw.Wait()
				}
				// Wait for the receiver, so the time counts delivery.
				for _, s := range src.Pages() {
					s.CloseWrite()
				}
				wg.Wait()
			})
		}
	}
}

func x509VerifyOptions(ca *SelfSignedCA) x509.VerifyOptions {
	return x509.VerifyOptions{Roots: ca.pool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}
}
