package migrate

// Guest is what the engine migrates: RAM (a memfd mapping the guest writes
// through) and a small opaque device state, in the process that owns both,
// as QEMU's migration code runs inside QEMU.
type Guest interface {
	// RAM is the guest's memory, a whole number of pages. The engine
	// only reads it on the source.
	RAM() []byte
	// Pause stops the guest and returns once no write to RAM is in
	// flight: RAM and State are then stable until Resume.
	Pause() error
	// Resume undoes Pause.
	Resume() error
	// Throttle slows the guest to (100 - percent) % of its speed, for
	// auto-converge; 0 removes the throttle. percent is 0..99.
	Throttle(percent int)
	// State returns the device state (registers, device models) while
	// paused, at most MaxDeviceStateBytes.
	State() ([]byte, error)
}
