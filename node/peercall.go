package node

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"time"
)

// peerCall sends one request to node n's peer API (HTTPS on its cluster
// address, mutual TLS with the cluster CA), the JSON of req as the body
// when req is not nil, and returns the status and at most limitBytes of
// the answer. timeout bounds the whole exchange. Every node-to-node call
// goes through here, over one pool of connections.
func (d *Daemon) peerCall(ctx context.Context, n NodeConfig, method, path string, req any, timeout time.Duration, limitBytes int64) (int, []byte, error) {
	d.peerOnce.Do(func() {
		d.peerTr = &http.Transport{TLSClientConfig: d.loaded.PKI.ClientTLS(), MaxIdleConnsPerHost: 2}
	})
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var body io.Reader
	if req != nil {
		b, err := json.Marshal(req)
		if err != nil {
			return 0, nil, err
		}
		body = bytes.NewReader(b)
	}
	hreq, err := http.NewRequestWithContext(ctx, method, "https://"+n.ClusterAddr+path, body)
	if err != nil {
		return 0, nil, err
	}
	resp, err := (&http.Client{Transport: d.peerTr}).Do(hreq)
	if err != nil {
		return 0, nil, fmt.Errorf("node %s is unreachable: %w", n.Name, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, limitBytes))
	if err != nil {
		return resp.StatusCode, nil, fmt.Errorf("node %s: %w", n.Name, err)
	}
	return resp.StatusCode, data, nil
}

// peerJSON is peerCall for a JSON answer: a status other than 200 is an
// error with the peer's text, and the answer is decoded into out.
func (d *Daemon) peerJSON(ctx context.Context, n NodeConfig, method, path string, req, out any, timeout time.Duration, limitBytes int64) error {
	status, data, err := d.peerCall(ctx, n, method, path, req, timeout, limitBytes)
	if err != nil {
		return err
	}
	if status != http.StatusOK {
		return fmt.Errorf("node %s: %s", n.Name, peerError(status, data))
	}
	if err := json.Unmarshal(data, out); err != nil {
		return fmt.Errorf("node %s answered: %w", n.Name, err)
	}
	return nil
}

// peerError is the text of a peer's error answer: its JSON error field,
// or the body itself.
func peerError(status int, data []byte) string {
	var e apiError
	if json.Unmarshal(data, &e) == nil && e.Error != "" {
		return e.Error
	}
	return fmt.Sprintf("%s: %s", http.StatusText(status), bytes.TrimSpace(data))
}
