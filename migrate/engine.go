package migrate

import (
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"time"
)

// The engine's conversation on the control stream (page streams carry
// pages and RoundEnd barriers only):
//
//	source                                destination
//	Hello                          ->
//	                               <-     Ack(token)   a random migration id
//	RoundStart(0)                  ->     (pages, RoundEnd(0) on every page stream)
//	                               <-     Ack(0)       every stream applied round 0, digest rehashed
//	... rounds 1..n-1 alike ...
//	(guest paused)
//	RoundStart(n), DeviceState, Digest ->
//	                               <-     Ack(n), Ack(ackReady)  digest equal: ready to resume
//	Commit                         ->     the commit point: the source never resumes after it
//	                               <-     Ack(ackResumed)        the guest runs on the destination
//
// Either side may send Error and abort instead. Before Commit is written
// the source resumes on any failure. A destination that sent Ack(ackReady)
// and lost the connection before Commit is in doubt: it keeps the state and
// waits for the source to redial and say Hello, Ack(token), then Commit or
// Error (resolve). The source redials when it wrote Commit and got no
// confirmation, or when it aborts after the destination may have been
// ready.

// Special acknowledgement indexes; rounds stay below MaxRoundsLimit.
const (
	ackReady   = 1<<62 + 1
	ackResumed = 1<<62 + 2
	ackAborted = 1<<62 + 3
)

// Error codes of Error frames.
const (
	codeCancelled = 1
	codeProtocol  = 2
	codeDigest    = 3
	codeGuest     = 4
	codeAbort     = 5
)

// RemoteError is the peer's Error frame.
type RemoteError struct{ Info ErrorInfo }

func (e *RemoteError) Error() string {
	return fmt.Sprintf("migrate: peer gave up (code %d): %s", e.Info.Code, e.Info.Message)
}

// ErrInDoubt: the source committed but the destination's confirmation never
// came, and redialling it did not get one either. The source stays stopped;
// the destination holds the guest (resumed, or in doubt until its timeout).
var ErrInDoubt = errors.New("migrate: committed, but the destination did not confirm")

// Timeouts of the switchover's tail, when the guest is paused and waits on
// the network.
const (
	// controlTimeout bounds waiting for an acknowledgement that needs no
	// bulk transfer (hello, ready after the last round, resumed).
	controlTimeout = 30 * time.Second
	// resolveTimeout bounds the source's redials after a lost commit.
	resolveTimeout = 20 * time.Second
	// resolveRetryInterval spaces the redials.
	resolveRetryInterval = 250 * time.Millisecond
	// DefaultInDoubtTimeout is how long a destination in doubt waits for
	// the source's verdict: longer than the source redials.
	DefaultInDoubtTimeout = 60 * time.Second
	// closeWaitTimeout bounds waiting for the peer's close after the last
	// acknowledgement.
	closeWaitTimeout = 5 * time.Second
)

func newToken() uint64 {
	var b [8]byte
	rand.Read(b[:])
	return binary.LittleEndian.Uint64(b[:])&(1<<61-1) | 1
}
