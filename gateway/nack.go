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
	dst = c.appendMsgHeader(dst, nackMagic1, uint16(len(n.Ranges)), n.Epoch, uint64(n.Timestamp))
	for _, r := range n.Ranges {
		dst = binary.BigEndian.AppendUint64(dst, r.First)
		dst = binary.BigEndian.AppendUint32(dst, r.Count)
	}
	return c.appendTag(dst, start)
}

// Repair requests and announcements share one header layout (24 bytes):
// magic "D" and their kind, version, flags, header length, a 16-bit count,
// two 64-bit fields; then count items, then the tag with a key.

// appendMsgHeader appends that header.
func (c *Codec) appendMsgHeader(dst []byte, kind byte, count uint16, x, y uint64) []byte {
	var h [NackHeaderLen]byte
	h[0], h[1], h[2] = magic0, kind, Version
	if c.mac != nil {
		h[3] = FlagAuth
	}
	binary.BigEndian.PutUint16(h[4:], NackHeaderLen)
	binary.BigEndian.PutUint16(h[6:], count)
	binary.BigEndian.PutUint64(h[8:], x)
	binary.BigEndian.PutUint64(h[16:], y)
	return append(dst, h[:]...)
}

// openMsg checks the header, length and tag of a message of kind whose
// count items of itemLen bytes each follow the header, count in
// minCount..maxCount; it returns the header length and the count.
func (c *Codec) openMsg(b []byte, kind byte, itemLen, minCount, maxCount int) (hlen, count int, err error) {
	if len(b) < NackHeaderLen || b[0] != magic0 || b[1] != kind || b[2] != Version || b[3]&^FlagAuth != 0 {
		return 0, 0, ErrNackMalformed
	}
	hlen = int(binary.BigEndian.Uint16(b[4:]))
	count = int(binary.BigEndian.Uint16(b[6:]))
	tlen := 0
	if b[3]&FlagAuth != 0 {
		tlen = TagLen
	}
	if hlen < NackHeaderLen || count < minCount || count > maxCount || len(b) != hlen+count*itemLen+tlen {
		return 0, 0, ErrNackMalformed
	}
	if c.mac != nil && (tlen == 0 || !c.tagValid(b[:len(b)-TagLen], b[len(b)-TagLen:])) {
		return 0, 0, ErrNackTag
	}
	return hlen, count, nil
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

// DecodeNack parses and checks a repair request into n, reusing n.Ranges.
// With a key, the request must carry a valid tag. It does not allocate
// once n.Ranges has room for MaxNackRanges.
func (c *Codec) DecodeNack(b []byte, n *Nack) error {
	hlen, count, err := c.openMsg(b, nackMagic1, NackRangeLen, 1, MaxNackRanges)
	if err != nil {
		return err
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
const announceMag1 = 'S' // its header is the repair request's, with no items

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
	return c.appendTag(c.appendMsgHeader(dst, announceMag1, 0, a.Epoch, a.Seq), start)
}

// DecodeAnnounce parses and checks an announcement; with a key it must
// carry a valid tag. It does not allocate.
func (c *Codec) DecodeAnnounce(b []byte) (Announce, error) {
	if _, _, err := c.openMsg(b, announceMag1, 0, 0, 0); err != nil {
		return Announce{}, err
	}
	return Announce{Epoch: binary.BigEndian.Uint64(b[8:]), Seq: binary.BigEndian.Uint64(b[16:])}, nil
}
