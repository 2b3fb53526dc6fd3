package migrate

// Status of a migration, as in QEMU's query-migrate.
const (
	StatusSetup     = "setup"
	StatusActive    = "active"      // pre-copy rounds
	StatusDevice    = "device"      // paused: the rest and the device state
	StatusHandoff   = "handoff"     // paused: the guest's volumes move to the destination
	StatusCompleted = "completed"   // committed and confirmed
	StatusFailed    = "failed"      // the guest runs on the source
	StatusCancelled = "cancelled"   // by the caller or a limit; the guest runs on the source
	StatusInDoubt   = "unconfirmed" // committed; the destination's confirmation never came
)

// Progress is reported while a migration runs (SourceOptions.Progress).
type Progress struct {
	Status                  string  `json:"status"`
	Round                   int     `json:"round"`
	ElapsedMs               float64 `json:"elapsed_ms"`
	RAMBytes                uint64  `json:"ram_bytes"`
	TransferredBytes        uint64  `json:"transferred_bytes"` // on the wire, all rounds
	RoundBytes              uint64  `json:"round_bytes"`       // RAM this round sends
	RemainingBytes          uint64  `json:"remaining_bytes"`   // RAM of this round not sent yet
	BandwidthBytesPerSecond float64 `json:"bandwidth_bytes_per_second"`
	DirtyBytesPerSecond     float64 `json:"dirty_bytes_per_second"`
	ThrottlePercent         int     `json:"throttle_percent"`
	ExpectedDowntimeMs      float64 `json:"expected_downtime_ms"`
}

// Stats are the outcome of a migration, with the fields of QEMU's
// query-migrate.
type Stats struct {
	Status             string  `json:"status"`
	Error              string  `json:"error,omitempty"`
	Transport          string  `json:"transport"`
	PageStreams        int     `json:"page_streams"`
	TotalTimeMs        float64 `json:"total_time_ms"`
	SetupTimeMs        float64 `json:"setup_time_ms"`
	ExpectedDowntimeMs float64 `json:"expected_downtime_ms"`
	DowntimeMs         float64 `json:"downtime_ms"`
	// HandoffMs is the part of the downtime spent moving the guest's
	// volumes (SourceOptions.Handoff); 0 without volumes.
	HandoffMs float64 `json:"handoff_ms"`
	// VerifyMs is the part of the downtime spent rehashing all of RAM
	// for the digest (SourceOptions.VerifyRAM); 0 without.
	VerifyMs         float64   `json:"verify_ms,omitempty"`
	TransferredBytes uint64    `json:"transferred_bytes"`
	RemainingBytes   uint64    `json:"remaining_bytes"`
	TotalBytes       uint64    `json:"total_bytes"`
	DuplicatePages   uint64    `json:"duplicate_pages"` // zero pages, sent without payload
	NormalPages      uint64    `json:"normal_pages"`    // sent raw
	DirtyPagesRate   float64   `json:"dirty_pages_rate"`
	Mbps             float64   `json:"mbps"`
	DirtySyncCount   int       `json:"dirty_sync_count"`
	ThrottlePercent  int       `json:"cpu_throttle_percentage"`
	Rounds           int       `json:"rounds"`
	Pages            PageStats `json:"pages"` // by encoding, all rounds
}
