//go:build race

package blockrep

// The race detector slows byte-range accesses of large buffers a
// hundredfold; the model test runs fewer cases under it.
const raceEnabled = true
