package gateway

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/binary"
	"hash"
	"net/netip"
)

// Frame format v1 constants (docs/frame.md).
const (
	// HeaderLen is the length of a v1 header in bytes.
	HeaderLen = 52
	// TagLen is the length of the truncated HMAC-SHA256 tag.
	TagLen = 16
	// Version is the frame format version this package writes.
	Version = 1
	// FlagAuth marks a frame that ends with an authentication tag.
	FlagAuth = 0x01
	// FlagRecord marks a record: a frame the relay made itself for the
	// agents (Relay.Publish), never delivered to the application.
	FlagRecord = 0x02
	// MaxPayload is the largest payload the 16-bit length field can carry.
	MaxPayload = 0xffff
	// MinKeyLen is the shortest HMAC key accepted (256 bits).
	MinKeyLen = 32

	magic0 = 'D'
	magic1 = 'G'
)

// Reason says why a frame was rejected. It implements error so Decode can
// return it without allocating; compare with errors.Is or ==.
type Reason uint8

// Reject reasons, each counted separately by receivers.
const (
	ReasonShort      Reason = iota + 1 // shorter than the fixed header
	ReasonMagic                        // first two bytes are not "DG"
	ReasonVersion                      // version is not 1
	ReasonFlags                        // a flag bit other than bits 0 and 1 is set
	ReasonHeaderLen                    // header length field < 52
	ReasonLength                       // payload length does not match the datagram
	ReasonTagMissing                   // a key is configured but the frame has no tag
	ReasonTagBad                       // the tag does not match
	numReasons
)

var reasonNames = [numReasons]string{
	ReasonShort:      "short",
	ReasonMagic:      "bad_magic",
	ReasonVersion:    "bad_version",
	ReasonFlags:      "unknown_flags",
	ReasonHeaderLen:  "bad_header_length",
	ReasonLength:     "length_mismatch",
	ReasonTagMissing: "tag_missing",
	ReasonTagBad:     "tag_bad",
}

// String returns the reason as a metric label value, e.g. "bad_magic".
func (r Reason) String() string {
	if r == 0 || r >= numReasons {
		return "unknown"
	}
	return reasonNames[r]
}

// Error implements error.
func (r Reason) Error() string { return "frame rejected: " + r.String() }

// Reasons lists every reject reason, for exporting counters.
func Reasons() []Reason {
	rs := make([]Reason, 0, numReasons-1)
	for r := Reason(1); r < numReasons; r++ {
		rs = append(rs, r)
	}
	return rs
}

// Header is the decoded fixed part of a frame.
type Header struct {
	// Flags as found on the wire (FlagAuth, FlagRecord); encoding sets
	// FlagAuth by the key and keeps FlagRecord.
	Flags uint8
	// IngressPort is the relay's local UDP port the datagram arrived on.
	IngressPort uint16
	// Epoch is the fencing token of the relaying primary; 0 means standalone.
	Epoch uint64
	// Seq counts frames within (relay, epoch), starting at 1.
	Seq uint64
	// Timestamp is when the relay received the datagram, ns since the Unix epoch.
	Timestamp int64
	// Source is the original sender. IPv4 senders are carried as
	// IPv4-mapped IPv6 on the wire and unmapped here.
	Source netip.AddrPort
}

// Frame is a decoded frame. Payload aliases the decoded buffer.
type Frame struct {
	Header
	Payload []byte
}

// Codec encodes and decodes frames, with HMAC state when a key is set.
// A Codec is not safe for concurrent use: give each goroutine its own.
type Codec struct {
	mac  hash.Hash // signs, and checks
	next hash.Hash // only checks: the next key, during a rotation
	sum  [sha256.Size]byte
}

// NewCodec returns a codec. With a non-empty key every encoded frame carries a
// tag and every decoded frame must carry a valid one. A non-empty next key
// is accepted too (a tag made with either is valid) but never signs with:
// key rotation without a gap (docs/operations.md, "Keys").
func NewCodec(key []byte, next ...[]byte) *Codec {
	c := &Codec{}
	if len(key) > 0 {
		c.mac = hmac.New(sha256.New, key)
		if len(next) > 0 && len(next[0]) > 0 {
			c.next = hmac.New(sha256.New, next[0])
		}
	}
	return c
}

// tagValid reports whether tag is the tag of body under the key or the
// next key. It does not allocate.
func (c *Codec) tagValid(body, tag []byte) bool {
	for _, m := range [2]hash.Hash{c.mac, c.next} {
		if m == nil {
			continue
		}
		m.Reset()
		m.Write(body)
		m.Sum(c.sum[:0])
		if hmac.Equal(c.sum[:TagLen], tag) {
			return true
		}
	}
	return false
}

// Authenticated reports whether the codec has a key.
func (c *Codec) Authenticated() bool { return c.mac != nil }

// Overhead is the number of bytes a frame adds to its payload.
func (c *Codec) Overhead() int {
	if c.mac != nil {
		return HeaderLen + TagLen
	}
	return HeaderLen
}

// EncodeInPlace turns buf into a frame whose payload is already at
// buf[HeaderLen:HeaderLen+n]: it writes the header in front and the tag (if
// keyed) behind, and returns the frame length. buf must have room for
// n+Overhead() bytes and n must not exceed MaxPayload. It does not allocate.
func (c *Codec) EncodeInPlace(buf []byte, h *Header, n int) int {
	flags := h.Flags &^ FlagAuth
	if c.mac != nil {
		flags |= FlagAuth
	}
	buf[0], buf[1], buf[2], buf[3] = magic0, magic1, Version, flags
	binary.BigEndian.PutUint16(buf[4:], HeaderLen)
	binary.BigEndian.PutUint16(buf[6:], h.IngressPort)
	binary.BigEndian.PutUint64(buf[8:], h.Epoch)
	binary.BigEndian.PutUint64(buf[16:], h.Seq)
	binary.BigEndian.PutUint64(buf[24:], uint64(h.Timestamp))
	ip := h.Source.Addr().As16() // IPv4 becomes ::ffff:a.b.c.d
	copy(buf[32:48], ip[:])
	binary.BigEndian.PutUint16(buf[48:], h.Source.Port())
	binary.BigEndian.PutUint16(buf[50:], uint16(n))
	end := HeaderLen + n
	if c.mac != nil {
		c.mac.Reset()
		c.mac.Write(buf[:end])
		c.mac.Sum(c.sum[:0])
		end += copy(buf[end:end+TagLen], c.sum[:TagLen])
	}
	return end
}

// AppendFrame appends the frame for h and payload to dst. It is the
// convenient form of EncodeInPlace for tests and tools.
func (c *Codec) AppendFrame(dst []byte, h Header, payload []byte) []byte {
	start := len(dst)
	need := len(payload) + c.Overhead()
	dst = append(dst, make([]byte, need)...)
	copy(dst[start+HeaderLen:], payload)
	n := c.EncodeInPlace(dst[start:], &h, len(payload))
	return dst[:start+n]
}

// Decode parses and checks one frame. On failure it returns a Reason. The
// returned payload aliases b. It does not allocate.
func (c *Codec) Decode(b []byte) (Frame, error) {
	var f Frame
	if len(b) < HeaderLen {
		return f, ReasonShort
	}
	if b[0] != magic0 || b[1] != magic1 {
		return f, ReasonMagic
	}
	if b[2] != Version {
		return f, ReasonVersion
	}
	flags := b[3]
	if flags&^(FlagAuth|FlagRecord) != 0 {
		return f, ReasonFlags
	}
	hlen := int(binary.BigEndian.Uint16(b[4:]))
	if hlen < HeaderLen {
		return f, ReasonHeaderLen
	}
	plen := int(binary.BigEndian.Uint16(b[50:]))
	tlen := 0
	if flags&FlagAuth != 0 {
		tlen = TagLen
	}
	if hlen+plen+tlen != len(b) {
		return f, ReasonLength
	}
	if c.mac != nil {
		if tlen == 0 {
			return f, ReasonTagMissing
		}
		if !c.tagValid(b[:hlen+plen], b[hlen+plen:]) {
			return f, ReasonTagBad
		}
	}
	f.Flags = flags
	f.IngressPort = binary.BigEndian.Uint16(b[6:])
	f.Epoch = binary.BigEndian.Uint64(b[8:])
	f.Seq = binary.BigEndian.Uint64(b[16:])
	f.Timestamp = int64(binary.BigEndian.Uint64(b[24:]))
	ip := netip.AddrFrom16([16]byte(b[32:48])).Unmap()
	f.Source = netip.AddrPortFrom(ip, binary.BigEndian.Uint16(b[48:]))
	f.Payload = b[hlen : hlen+plen : hlen+plen]
	return f, nil
}
