package node

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"

	"github.com/paddock-io/paddock/internal/atomicfile"
)

// maxConfigBytes bounds every JSON file we read from the data directory.
const maxConfigBytes = 1 << 20

func writeJSON(path string, v any, perm os.FileMode) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	return atomicfile.Write(path, append(b, '\n'), perm)
}

// readJSON decodes a file strictly: unknown fields, trailing data and
// oversized files are errors that name the file.
func readJSON(path string, v any) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return err
	}
	if st.Size() > maxConfigBytes {
		return fmt.Errorf("%s: %d bytes is larger than the limit of %d", path, st.Size(), maxConfigBytes)
	}
	data := make([]byte, st.Size())
	if _, err := f.ReadAt(data, 0); err != nil && st.Size() > 0 {
		return fmt.Errorf("%s: %w", path, err)
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return fmt.Errorf("%s is corrupt: %w", path, err)
	}
	if dec.More() {
		return fmt.Errorf("%s is corrupt: data after the JSON value", path)
	}
	return nil
}
