package gateway

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
)

// Egress header (docs/frame.md, "Egress header"): what an application
// puts in front of a datagram it sends through an egress port in header
// mode, to say where it goes and, optionally, which message it is.
const (
	// EgressHeaderMin is the length of an egress header without a
	// destination address and message id.
	EgressHeaderMin = 8
	// EgressFlagID marks a header that carries a message id.
	EgressFlagID = 0x01
	egressMagic0 = 'D'
	egressMagic1 = 'E'
	egressVer    = 1
)

// EgressHeader is the decoded egress header.
type EgressHeader struct {
	// Dest is where the datagram goes; the zero value: the listener's own
	// destination.
	Dest netip.AddrPort
	// ID identifies the message for duplicate suppression (HasID).
	ID    uint64
	HasID bool
}

// ErrEgressHeader: a datagram in header mode whose header is malformed;
// the error says how.
var ErrEgressHeader = errors.New("bad egress header")

// ParseEgressHeader splits b into its egress header and the payload after
// it (aliasing b). It does not allocate.
func ParseEgressHeader(b []byte) (EgressHeader, []byte, error) {
	var h EgressHeader
	if len(b) < EgressHeaderMin {
		return h, nil, fmt.Errorf("%w: %d bytes, shorter than %d", ErrEgressHeader, len(b), EgressHeaderMin)
	}
	if b[0] != egressMagic0 || b[1] != egressMagic1 {
		return h, nil, fmt.Errorf("%w: magic %#02x %#02x, want \"DE\"", ErrEgressHeader, b[0], b[1])
	}
	if b[2] != egressVer {
		return h, nil, fmt.Errorf("%w: version %d, want %d", ErrEgressHeader, b[2], egressVer)
	}
	flags := b[3]
	if flags&^EgressFlagID != 0 {
		return h, nil, fmt.Errorf("%w: unknown flags %#02x", ErrEgressHeader, flags)
	}
	alen, port := int(b[4]), binary.BigEndian.Uint16(b[6:8])
	if b[5] != 0 {
		return h, nil, fmt.Errorf("%w: reserved byte %#02x, want 0", ErrEgressHeader, b[5])
	}
	n := EgressHeaderMin + alen
	if flags&EgressFlagID != 0 {
		n += 8
	}
	if len(b) < n {
		return h, nil, fmt.Errorf("%w: %d bytes, the header alone needs %d", ErrEgressHeader, len(b), n)
	}
	switch alen {
	case 0:
		if port != 0 {
			return h, nil, fmt.Errorf("%w: port %d without an address", ErrEgressHeader, port)
		}
	case 4:
		h.Dest = netip.AddrPortFrom(netip.AddrFrom4([4]byte(b[8:12])), port)
	case 16:
		h.Dest = netip.AddrPortFrom(netip.AddrFrom16([16]byte(b[8:24])).Unmap(), port)
	default:
		return h, nil, fmt.Errorf("%w: address length %d, want 0, 4 or 16", ErrEgressHeader, alen)
	}
	if alen != 0 && port == 0 {
		return h, nil, fmt.Errorf("%w: destination port 0", ErrEgressHeader)
	}
	if flags&EgressFlagID != 0 {
		h.ID, h.HasID = binary.BigEndian.Uint64(b[8+alen:]), true
	}
	return h, b[n:], nil
}

// AppendEgressHeader appends h's encoding to dst (the payload follows).
func AppendEgressHeader(dst []byte, h EgressHeader) []byte {
	var flags, alen byte
	if h.HasID {
		flags |= EgressFlagID
	}
	a := h.Dest.Addr().Unmap()
	if h.Dest.IsValid() {
		alen = 4
		if a.Is6() {
			alen = 16
		}
	}
	dst = append(dst, egressMagic0, egressMagic1, egressVer, flags, alen, 0)
	dst = binary.BigEndian.AppendUint16(dst, h.Dest.Port())
	if h.Dest.IsValid() {
		dst = append(dst, a.AsSlice()...)
	}
	if h.HasID {
		dst = binary.BigEndian.AppendUint64(dst, h.ID)
	}
	return dst
}

// Records: frames a relay makes itself, in the feed's sequence, for the
// agents rather than the application (docs/frame.md, "Records"), flagged
// FlagRecord; receivers hand them to their record handler
// (Receiver.SetRecords) and never deliver them. The payload is a type byte
// and what that type carries.
const (
	// RecordEgressSent lists message ids the primary's egress sent.
	RecordEgressSent = 1
	// maxRecordIDs bounds the ids in one record (1 + 8×128 bytes).
	maxRecordIDs = 128
)

// AppendSentRecord appends a RecordEgressSent record of ids to dst.
func AppendSentRecord(dst []byte, ids []uint64) []byte {
	dst = append(dst, RecordEgressSent)
	for _, id := range ids {
		dst = binary.BigEndian.AppendUint64(dst, id)
	}
	return dst
}

// ParseSentRecord returns the ids of a RecordEgressSent record, appended to
// ids; ok is false for another record type or a malformed one.
func ParseSentRecord(ids []uint64, rec []byte) (_ []uint64, ok bool) {
	if len(rec) < 1 || rec[0] != RecordEgressSent || (len(rec)-1)%8 != 0 {
		return ids, false
	}
	for b := rec[1:]; len(b) > 0; b = b[8:] {
		ids = append(ids, binary.BigEndian.Uint64(b))
	}
	return ids, true
}
