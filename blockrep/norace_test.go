//go:build !race

package blockrep

const raceEnabled = false
