package migrate

import (
	"context"
	"fmt"
	"time"
)

// resolve redials the destination until it confirms the verdict (commit:
// resumed; abort: discarded) or ctx ends.
func (s *source) resolve(ctx context.Context, commit bool) error {
	for {
		err := s.resolveOnce(ctx, commit)
		if err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return err
		case <-time.After(resolveRetryInterval):
		}
	}
}

// resolveOnce says Hello, Ack(token), then Commit or Error on a new
// connection and waits for the destination's answer.
func (s *source) resolveOnce(ctx context.Context, commit bool) error {
	if s.opts.Redial == nil {
		return fmt.Errorf("migrate: no redial configured")
	}
	if s.token == 0 {
		return fmt.Errorf("migrate: no migration to resolve")
	}
	conn, err := s.opts.Redial(ctx)
	if err != nil {
		return err
	}
	defer conn.Abort("resolved")
	if dl, ok := ctx.Deadline(); ok {
		conn.Control().SetDeadline(dl)
	}
	enc, _ := NewEncoder(conn.Control(), EncoderOptions{})
	dec := NewDecoder(conn.Control(), 0)
	defer dec.Close()
	if err := enc.WriteHello(Hello{RAMBytes: uint64(len(s.ram)), PageBytes: PageBytes, PageStreams: uint32(len(conn.Pages()))}); err != nil {
		return err
	}
	if err := enc.WriteAck(s.token); err != nil {
		return err
	}
	want := uint64(ackAborted)
	if commit {
		want = ackResumed
		err = enc.WriteCommit()
	} else {
		err = enc.WriteError(ErrorInfo{Code: codeAbort, Message: "the source aborted the migration and runs the guest"})
	}
	if err != nil {
		return err
	}
	f, err := dec.Next()
	if err != nil {
		return fmt.Errorf("migrate: resolve: %w", err)
	}
	switch f.Type {
	case FrameAck:
		if f.Index != want {
			return corrupt("resolve answered with ack %#x, want %#x", f.Index, want)
		}
		conn.Close()
		return nil
	case FrameError:
		info, err := f.ErrorInfo()
		if err != nil {
			return err
		}
		return &RemoteError{Info: info}
	}
	return corrupt("resolve answered with a %s frame", f.Type)
}
