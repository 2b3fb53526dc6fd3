package node

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"time"
)

// The control API serves the CLI on a unix socket in the data directory
// (mode 0600: whoever can read the data directory's keys may use it). It
// speaks JSON over HTTP; errors come back as {"error": "..."} with a 4xx or
// 5xx status.

// maxControlBodyBytes bounds a control request.
const maxControlBodyBytes = 1 << 20

type apiError struct {
	Error string `json:"error"`
}

func writeJSONResponse(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(v)
}

func writeError(w http.ResponseWriter, status int, err error) {
	writeJSONResponse(w, status, apiError{Error: err.Error()})
}

// decodeBody reads a bounded, strict JSON request body.
func decodeBody(r *http.Request, v any) error {
	dec := json.NewDecoder(io.LimitReader(r.Body, maxControlBodyBytes))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return fmt.Errorf("bad request body: %w", err)
	}
	return nil
}

// serveControl listens on the socket until ctx ends.
func serveControl(ctx context.Context, path string, h http.Handler) error {
	os.Remove(path) // a stale socket of a dead daemon
	ln, err := net.Listen("unix", path)
	if err != nil {
		return fmt.Errorf("control socket %s: %w", path, err)
	}
	os.Chmod(path, 0o600)
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 5 * time.Second}
	go func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		srv.Shutdown(sctx)
		// The node stops: so do the processes it started for it.
		if s, ok := h.(interface{ stopChildren() }); ok {
			s.stopChildren()
		}
	}()
	err = srv.Serve(ln)
	if errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return err
}

// ControlClient talks to a daemon's control socket.
type ControlClient struct {
	socket string
	http   *http.Client
}

// NewControlClient returns a client for the daemon of a data directory.
func NewControlClient(d DataDir, timeout time.Duration) *ControlClient {
	sock := d.SocketPath()
	return &ControlClient{socket: sock, http: &http.Client{
		Timeout: timeout,
		Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var dl net.Dialer
			return dl.DialContext(ctx, "unix", sock)
		}},
	}}
}

// ErrDaemonDown says no daemon answers on the socket.
var ErrDaemonDown = errors.New("no paddock node is running for this data directory")

// Call sends a request (in nil for GET) and decodes the reply into out.
func (c *ControlClient) Call(method, path string, in, out any) error {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return err
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequest(method, "http://paddock"+path, body)
	if err != nil {
		return err
	}
	resp, err := c.http.Do(req)
	if err != nil {
		var ne *net.OpError
		if errors.As(err, &ne) {
			return fmt.Errorf("%w (socket %s): start it with \"paddock node --data-dir ...\"", ErrDaemonDown, c.socket)
		}
		return err
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, maxControlBodyBytes))
	if err != nil {
		return err
	}
	if resp.StatusCode >= 300 {
		var e apiError
		if json.Unmarshal(data, &e) == nil && e.Error != "" {
			return errors.New(e.Error)
		}
		return fmt.Errorf("control API: %s", resp.Status)
	}
	if out != nil {
		return json.Unmarshal(data, out)
	}
	return nil
}
