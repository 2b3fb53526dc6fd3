package nbd

// Wire constants of the NBD protocol (doc/proto.md). All integers on the wire
// are big-endian.

const (
	magicInit        uint64 = 0x4e42444d41474943 // "NBDMAGIC"
	magicOption      uint64 = 0x49484156454F5054 // "IHAVEOPT"
	magicOptionReply uint64 = 0x0003e889045565a9
	magicRequest     uint32 = 0x25609513
	magicSimple      uint32 = 0x67446698
	magicStructured  uint32 = 0x668e33ef
)

// Handshake flags (server) and client flags.
const (
	flagFixedNewstyle  uint16 = 1 << 0
	flagNoZeroes       uint16 = 1 << 1
	flagCFixedNewstyle uint32 = 1 << 0
	flagCNoZeroes      uint32 = 1 << 1
)

// Transmission flags.
const (
	tflagHasFlags        uint16 = 1 << 0
	tflagReadOnly        uint16 = 1 << 1
	tflagSendFlush       uint16 = 1 << 2
	tflagSendFUA         uint16 = 1 << 3
	tflagRotational      uint16 = 1 << 4
	tflagSendTrim        uint16 = 1 << 5
	tflagSendWriteZeroes uint16 = 1 << 6
	tflagSendDF          uint16 = 1 << 7
	tflagCanMultiConn    uint16 = 1 << 8
	tflagSendResize      uint16 = 1 << 9
	tflagSendCache       uint16 = 1 << 10
	tflagSendFastZero    uint16 = 1 << 11
)

// Options.
const (
	optExportName      uint32 = 1
	optAbort           uint32 = 2
	optList            uint32 = 3
	optPeekExport      uint32 = 4
	optStartTLS        uint32 = 5
	optInfo            uint32 = 6
	optGo              uint32 = 7
	optStructuredReply uint32 = 8
	optListMetaContext uint32 = 9
	optSetMetaContext  uint32 = 10
)

// Option replies.
const (
	repAck              uint32 = 1
	repServer           uint32 = 2
	repInfo             uint32 = 3
	repMetaContext      uint32 = 4
	repErrUnsup         uint32 = 1<<31 + 1
	repErrPolicy        uint32 = 1<<31 + 2
	repErrInvalid       uint32 = 1<<31 + 3
	repErrPlatform      uint32 = 1<<31 + 4
	repErrTLSReqd       uint32 = 1<<31 + 5
	repErrUnknown       uint32 = 1<<31 + 6
	repErrShutdown      uint32 = 1<<31 + 7
	repErrBlockSizeReqd uint32 = 1<<31 + 8
	repErrTooBig        uint32 = 1<<31 + 9
)

// Information types of NBD_REP_INFO.
const (
	infoExport      uint16 = 0
	infoName        uint16 = 1
	infoDescription uint16 = 2
	infoBlockSize   uint16 = 3
)

// Commands.
const (
	CmdRead        uint16 = 0
	CmdWrite       uint16 = 1
	CmdDisc        uint16 = 2
	CmdFlush       uint16 = 3
	CmdTrim        uint16 = 4
	CmdCache       uint16 = 5
	CmdWriteZeroes uint16 = 6
	CmdBlockStatus uint16 = 7
)

// Command flags.
const (
	CmdFlagFUA      uint16 = 1 << 0
	CmdFlagNoHole   uint16 = 1 << 1
	CmdFlagDF       uint16 = 1 << 2
	CmdFlagReqOne   uint16 = 1 << 3
	CmdFlagFastZero uint16 = 1 << 4
)

// Structured reply chunk flags and types.
const (
	replyFlagDone        uint16 = 1 << 0
	replyTypeNone        uint16 = 0
	replyTypeOffsetData  uint16 = 1
	replyTypeOffsetHole  uint16 = 2
	replyTypeBlockStatus uint16 = 5
	replyTypeError       uint16 = 1<<15 + 1
	replyTypeErrorOffset uint16 = 1<<15 + 2
)

// Error values of replies. They are the Linux errno numbers, which the
// protocol adopted.
const (
	EPERM     uint32 = 1
	EIO       uint32 = 5
	ENOMEM    uint32 = 12
	EINVAL    uint32 = 22
	ENOSPC    uint32 = 28
	EOVERFLOW uint32 = 75
	ENOTSUP   uint32 = 95
	ESHUTDOWN uint32 = 108
)

// base:allocation extent flags.
const (
	stateHole uint32 = 1 << 0
	stateZero uint32 = 1 << 1
)

const (
	// metaBaseAllocation is the only metadata context this server knows.
	metaBaseAllocation = "base:allocation"
	// metaBaseAllocationID is the id we hand out for it; any nonzero
	// number chosen by the server is valid.
	metaBaseAllocationID uint32 = 1
)

// requestHeaderBytes is the size of a (compact) request header: magic,
// flags, type, cookie, offset, length.
const requestHeaderBytes = 28

func cmdName(t uint16) string {
	switch t {
	case CmdRead:
		return "READ"
	case CmdWrite:
		return "WRITE"
	case CmdDisc:
		return "DISC"
	case CmdFlush:
		return "FLUSH"
	case CmdTrim:
		return "TRIM"
	case CmdCache:
		return "CACHE"
	case CmdWriteZeroes:
		return "WRITE_ZEROES"
	case CmdBlockStatus:
		return "BLOCK_STATUS"
	}
	return "UNKNOWN"
}
