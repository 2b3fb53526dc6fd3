package membership

import "golang.org/x/sys/unix"

// bootMs reads CLOCK_BOOTTIME in ms. It is monotonic like
// CLOCK_MONOTONIC (which Go's time.Since uses) and not slewed by time
// daemons beyond rate, but it also counts the time the system was
// suspended: a host that slept (or a VM its hypervisor suspended that way)
// wakes up with its self-fence lease and heartbeats already old, instead
// of believing no time passed.
func bootMs() int64 {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_BOOTTIME, &ts); err != nil {
		panic("CLOCK_BOOTTIME: " + err.Error()) // present since Linux 2.6.39
	}
	return ts.Nano() / 1e6
}
