// Package boottime reads CLOCK_BOOTTIME: monotonic like CLOCK_MONOTONIC
// (which Go's time.Since uses) and not stepped by time daemons, but it
// also counts the time the system was suspended. Leases are measured on
// it: a host that slept (or a VM suspended that way) wakes up with its
// leases already old, instead of believing no time passed.
package boottime

import (
	"time"

	"golang.org/x/sys/unix"
)

// Now is the time since boot.
func Now() time.Duration {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_BOOTTIME, &ts); err != nil {
		panic("CLOCK_BOOTTIME: " + err.Error()) // present since Linux 2.6.39
	}
	return time.Duration(ts.Nano())
}

// Ms is Now in milliseconds.
func Ms() int64 { return Now().Milliseconds() }
