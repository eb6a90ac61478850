package gateway

import (
	"encoding/binary"
	"errors"
)

// Repair request (NACK) format v1 (docs/frame.md, "Repair requests"): a
// receiver lists the sequence ranges of one epoch it is missing and sends
// them to the relay the frames came from.
const (
	NackHeaderLen = 24
	NackRangeLen  = 12 // first sequence number (8) and count (4)
	// MaxNackRanges keeps a request within one small datagram.
	MaxNackRanges = 64
	// MaxNackFrames bounds what one request may ask for in all.
	MaxNackFrames = 1 << 16

	nackMagic1 = 'N'
)

// SeqRange is Count sequence numbers from First.
type SeqRange struct {
	First uint64
	Count uint32
}

// Nack is a decoded repair request.
type Nack struct {
	Epoch uint64
	// Timestamp is when the receiver sent it (ns since the Unix epoch); with
	// a key, the relay refuses requests far from its own clock (replays).
	Timestamp int64
	Ranges    []SeqRange
}

// Errors from DecodeNack; the relay counts refusals by them.
var (
	ErrNackMalformed = errors.New("repair request malformed")
	ErrNackTag       = errors.New("repair request tag missing or bad")
)

// isNack reports whether b claims to be a repair request.
func isNack(b []byte) bool { return len(b) >= 2 && b[0] == magic0 && b[1] == nackMagic1 }

// AppendNack appends n, tagged when the codec has a key, to dst.
func (c *Codec) AppendNack(dst []byte, n *Nack) []byte {
	start := len(dst)
	var h [NackHeaderLen]byte
	h[0], h[1], h[2] = magic0, nackMagic1, Version
	if c.mac != nil {
		h[3] = FlagAuth
	}
	binary.BigEndian.PutUint16(h[4:], NackHeaderLen)
	binary.BigEndian.PutUint16(h[6:], uint16(len(n.Ranges)))
	binary.BigEndian.PutUint64(h[8:], n.Epoch)
	binary.BigEndian.PutUint64(h[16:], uint64(n.Timestamp))
	dst = append(dst, h[:]...)
	for _, r := range n.Ranges {
		dst = binary.BigEndian.AppendUint64(dst, r.First)
		dst = binary.BigEndian.AppendUint32(dst, r.Count)
	}
	return c.appendTag(dst, start)
}

// appendTag appends, when the codec has a key, the tag of dst[start:].
func (c *Codec) appendTag(dst []byte, start int) []byte {
	if c.mac == nil {
		return dst
	}
	c.mac.Reset()
	c.mac.Write(dst[start:])
	c.mac.Sum(c.sum[:0])
	return append(dst, c.sum[:TagLen]...)
}

// tagOK reports whether b ends in the tag of its first body bytes.
func (c *Codec) tagOK(b []byte, body int) bool { return c.tagValid(b[:body], b[body:]) }

// DecodeNack parses and checks a repair request into n, reusing n.Ranges.
// With a key, the request must carry a valid tag. It does not allocate
// once n.Ranges has room for MaxNackRanges.
func (c *Codec) DecodeNack(b []byte, n *Nack) error {
	if len(b) < NackHeaderLen || b[0] != magic0 || b[1] != nackMagic1 || b[2] != Version || b[3]&^FlagAuth != 0 {
		return ErrNackMalformed
	}
	hlen := int(binary.BigEndian.Uint16(b[4:]))
	count := int(binary.BigEndian.Uint16(b[6:]))
	tlen := 0
	if b[3]&FlagAuth != 0 {
		tlen = TagLen
	}
	if hlen < NackHeaderLen || count == 0 || count > MaxNackRanges || len(b) != hlen+count*NackRangeLen+tlen {
		return ErrNackMalformed
	}
	if c.mac != nil {
		if tlen == 0 {
			return ErrNackTag
		}
		if !c.tagOK(b, len(b)-TagLen) {
			return ErrNackTag
		}
	}
	n.Epoch = binary.BigEndian.Uint64(b[8:])
	n.Timestamp = int64(binary.BigEndian.Uint64(b[16:]))
	n.Ranges = n.Ranges[:0]
	total := 0
	for i := range count {
		p := b[hlen+i*NackRangeLen:]
		r := SeqRange{First: binary.BigEndian.Uint64(p), Count: binary.BigEndian.Uint32(p[8:])}
		total += int(r.Count)
		if r.First == 0 || r.Count == 0 || r.First+uint64(r.Count) < r.First || total > MaxNackFrames {
			return ErrNackMalformed
		}
		n.Ranges = append(n.Ranges, r)
	}
	return nil
}

// Sequence announcement (docs/frame.md, "Announcements"): when the feed
// pauses, the relay says which sequence number it sent last, so a
// receiver that missed the last frames before the pause — which no later
// frame reveals — can ask for them too (PGM's source path messages do the
// same).
const (
	AnnounceLen  = 24
	announceMag1 = 'S'
)

// Announce is a decoded sequence announcement.
type Announce struct {
	Epoch, Seq uint64
}

// IsAnnounce reports whether b claims to be an announcement (and not a
// frame); DecodeAnnounce checks it.
func IsAnnounce(b []byte) bool { return len(b) >= 2 && b[0] == magic0 && b[1] == announceMag1 }

// AppendAnnounce appends a, tagged when the codec has a key, to dst.
func (c *Codec) AppendAnnounce(dst []byte, a Announce) []byte {
	start := len(dst)
	var h [AnnounceLen]byte
	h[0], h[1], h[2] = magic0, announceMag1, Version
	if c.mac != nil {
		h[3] = FlagAuth
	}
	binary.BigEndian.PutUint16(h[4:], AnnounceLen)
	binary.BigEndian.PutUint64(h[8:], a.Epoch)
	binary.BigEndian.PutUint64(h[16:], a.Seq)
	return c.appendTag(append(dst, h[:]...), start)
}

// DecodeAnnounce parses and checks an announcement; with a key it must
// carry a valid tag. It does not allocate.
func (c *Codec) DecodeAnnounce(b []byte) (Announce, error) {
	if len(b) < AnnounceLen || !IsAnnounce(b) || b[2] != Version || b[3]&^FlagAuth != 0 {
		return Announce{}, ErrNackMalformed
	}
	hlen := int(binary.BigEndian.Uint16(b[4:]))
	tlen := 0
	if b[3]&FlagAuth != 0 {
		tlen = TagLen
	}
	if hlen < AnnounceLen || len(b) != hlen+tlen {
		return Announce{}, ErrNackMalformed
	}
	if c.mac != nil {
		if tlen == 0 {
			return Announce{}, ErrNackTag
		}
		if !c.tagOK(b, hlen) {
			return Announce{}, ErrNackTag
		}
	}
	return Announce{Epoch: binary.BigEndian.Uint64(b[8:]), Seq: binary.BigEndian.Uint64(b[16:])}, nil
}
