package migrate

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// resolveRequest is what a source says on a redial: Hello, Ack(token),
// then Commit or Error.
type resolveRequest struct {
	token  uint64
	commit bool
	enc    *Encoder
}

// readResolve reads a resolve request; on any other conversation it
// answers with an Error and returns an error.
func readResolve(conn Conn) (resolveRequest, error) {
	ctl := conn.Control()
	ctl.SetDeadline(time.Now().Add(handshakeTimeout))
	enc, _ := NewEncoder(ctl, EncoderOptions{})
	dec := NewDecoder(ctl, 0)
	defer dec.Close()
	req := resolveRequest{enc: enc}
	f, err := dec.Next()
	if err != nil {
		return req, err
	}
	if _, err := f.Hello(); err != nil {
		return req, err
	}
	if f, err = dec.Next(); err != nil {
		return req, err
	}
	if f.Type != FrameAck {
		err := errors.New("migrate: this destination holds a migration in doubt and takes no new one")
		enc.WriteError(ErrorInfo{Code: codeProtocol, Message: err.Error()})
		return req, err
	}
	req.token = f.Index
	if f, err = dec.Next(); err != nil {
		return req, err
	}
	switch f.Type {
	case FrameCommit:
		req.commit = true
	case FrameError:
	default:
		err := corrupt("resolve with a %s frame", f.Type)
		enc.WriteError(ErrorInfo{Code: codeProtocol, Message: err.Error()})
		return req, err
	}
	return req, nil
}

// awaitVerdict waits, in doubt, for the source's redial: commit resumes
// the guest here, abort (or the timeout) discards.
func (d *dest) awaitVerdict(ctx context.Context, l Listener) error {
	ctx, cancel := context.WithTimeout(ctx, d.opts.InDoubtTimeout)
	defer cancel()
	for {
		conn, err := l.Accept(ctx)
		if err != nil {
			return fmt.Errorf("no verdict from the source: %w", err)
		}
		req, err := readResolve(conn)
		if err != nil {
			conn.Abort("")
			continue
		}
		if req.token != d.token {
			req.enc.WriteError(ErrorInfo{Code: codeProtocol, Message: "unknown migration"})
			conn.Abort("")
			continue
		}
		if !req.commit {
			req.enc.WriteAck(ackAborted)
			conn.Close()
			return errors.New("the source aborted")
		}
		if err := d.opts.Resume(d.state); err != nil {
			req.enc.WriteError(ErrorInfo{Code: codeGuest, Message: "resume on the destination: " + err.Error()})
			conn.Abort("")
			return fmt.Errorf("resume on the destination: %w", err)
		}
		d.committed = d.token
		d.hook("committed", d.st.Rounds)
		req.enc.WriteAck(ackResumed)
		// The source closes after reading the ack; give it the time.
		// It had its answer on this connection: no need to linger.
		waitClosed(conn)
		return nil
	}
}

// waitClosed waits briefly for the peer to close the control stream, so
// that Close does not drop the last acknowledgement.
func waitClosed(conn Conn) {
	ctl := conn.Control()
	ctl.SetDeadline(time.Now().Add(closeWaitTimeout))
	var b [64]byte
	for {
		if _, err := ctl.Read(b[:]); err != nil {
			break
		}
	}
	conn.Close()
}

// linger answers redials of a source that may have missed the commit's
// confirmation, for as long as the source redials.
func (d *dest) linger(ctx context.Context, l Listener) {
	ctx, cancel := context.WithTimeout(ctx, resolveTimeout+closeWaitTimeout)
	defer cancel()
	for {
		conn, err := l.Accept(ctx)
		if err != nil {
			return
		}
		req, err := readResolve(conn)
		if err != nil {
			conn.Abort("")
			continue
		}
		if req.token == d.committed && req.commit {
			req.enc.WriteAck(ackResumed)
			waitClosed(conn)
			return
		}
		req.enc.WriteError(ErrorInfo{Code: codeProtocol, Message: "the guest already runs here; nothing to resolve"})
		conn.Abort("")
	}
}

// answerStrayResolve answers a resolve that reached run: confirm a commit
// that happened, refuse anything else.
func (d *dest) answerStrayResolve(conn Conn, enc *Encoder, dec *Decoder, token uint64) {
	f, err := dec.Next()
	if err == nil && f.Type == FrameCommit && token == d.committed && token != 0 {
		enc.WriteAck(ackResumed)
		waitClosed(conn)
		return
	}
	enc.WriteError(ErrorInfo{Code: codeProtocol, Message: "no migration in doubt here"})
	conn.Abort("")
}
