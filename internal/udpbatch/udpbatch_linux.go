package udpbatch

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// maxGSOSegments is the number of segments one UDP_SEGMENT send may carry.
// Linux allowed 64 from 4.18 and 128 later; 64 works everywhere.
const maxGSOSegments = 64

// maxGSOBytes bounds the payload of one GSO send (the IPv4 datagram limit).
const maxGSOBytes = 65507

// Meta describes one datagram read by ReadBatch.
type Meta struct {
	N     int            // bytes read into the buffer
	From  netip.AddrPort // sender
	Trunc bool           // the datagram did not fit the buffer (MSG_TRUNC)
	// Seg, on a socket with GRO (EnableGRO), is the size of the datagrams
	// the kernel coalesced into this buffer: N bytes of datagrams of Seg
	// bytes each, the last one possibly shorter (Segments splits them).
	// 0: one datagram.
	Seg int
}

// Next splits the first datagram off buf, the rest of a buffer read with
// m (see Meta.Seg): Next(buf[:m.N]) gives the first, Next(rest) the one
// after, until rest is empty.
func (m *Meta) Next(buf []byte) (dgram, rest []byte) {
	if m.Seg <= 0 || m.Seg >= len(buf) {
		return buf, nil
	}
	return buf[:m.Seg:m.Seg], buf[m.Seg:]
}

// Conn does batched I/O on a UDP socket with recvmmsg(2) and sendmmsg(2)
// over headers allocated once, so steady-state I/O allocates nothing (x/net's
// ReadBatch allocates a net.Addr per datagram). A Conn is not safe for
// concurrent use; several Conns may share one socket.
type Conn struct {
	rc  syscall.RawConn
	gso bool // use UDP_SEGMENT for runs of equal-size frames

	hdrs  []unix.Mmsghdr
	iovs  []unix.Iovec
	names []unix.RawSockaddrInet6
	cmsgs []byte // one UDP_SEGMENT control message per header
	gro   bool   // reads take a UDP_GRO control message (EnableGRO)
	rcms  []byte // one UDP_GRO control message per header read

	// Results of the closures below; kept in the struct so that the
	// closures are built once and calls do not allocate.
	op, opN      int
	opErr        error
	readFn       func(fd uintptr) bool
	writeFn      func(fd uintptr) bool
	counts       []int                 // frames carried by each header being sent
	dst          unix.RawSockaddrInet6 // destination of the current WriteBatch
	gsoFallbacks uint64                // GSO sends refused and resent singly
}

var (
	cmsgSpace = unix.CmsgSpace(2)
	groSpace  = unix.CmsgSpace(4) // UDP_GRO's segment size is an int
)

// New prepares batched I/O of up to size datagrams per call on c. With gso,
// WriteBatch sends runs of equal-size datagrams as one UDP_SEGMENT send; use
// ProbeGSO first to learn whether the kernel supports it.
func New(c *net.UDPConn, size int, gso bool) (*Conn, error) {
	rc, err := c.SyscallConn()
	if err != nil {
		return nil, fmt.Errorf("getting raw socket: %w", err)
	}
	return NewRaw(rc, size, gso), nil
}

// NewRaw is New on any datagram socket, such as a connected unix datagram
// socket; WriteBatch with the zero address sends on a connected socket. GSO
// is for UDP sockets only.
func NewRaw(rc syscall.RawConn, size int, gso bool) *Conn {
	m := &Conn{
		rc:     rc,
		gso:    gso,
		hdrs:   make([]unix.Mmsghdr, size),
		iovs:   make([]unix.Iovec, size),
		names:  make([]unix.RawSockaddrInet6, size),
		cmsgs:  make([]byte, size*cmsgSpace),
		counts: make([]int, size),
	}
	m.readFn = m.doRead
	m.writeFn = m.doWrite
	return m
}

func (m *Conn) doRead(fd uintptr) bool {
	n, _, errno := unix.Syscall6(unix.SYS_RECVMMSG, fd, uintptr(unsafe.Pointer(&m.hdrs[0])), uintptr(m.op), 0, 0, 0)
	if errno == unix.EAGAIN || errno == unix.EINTR {
		return false
	}
	m.opN, m.opErr = int(n), nil
	if errno != 0 {
		m.opN, m.opErr = 0, errno
	}
	return true
}

func (m *Conn) doWrite(fd uintptr) bool {
	n, _, errno := unix.Syscall6(unix.SYS_SENDMMSG, fd, uintptr(unsafe.Pointer(&m.hdrs[m.op])), uintptr(m.opN), 0, 0, 0)
	if errno == unix.EAGAIN || errno == unix.EINTR {
		return false
	}
	m.opErr = nil
	if errno != 0 {
		n, m.opErr = 0, errno
	}
	m.opN = int(n)
	return true
}

// ReadBatch blocks until at least one datagram is there, then reads as many
// as are queued, up to len(bufs), each into its buffer, and describes them in
// ms. It returns the socket's error, such as os.ErrDeadlineExceeded.
func (m *Conn) ReadBatch(bufs [][]byte, ms []Meta) (int, error) {
	n := min(len(bufs), len(ms), len(m.hdrs))
	for i := range n {
		m.iovs[i].Base = unsafe.SliceData(bufs[i])
		m.iovs[i].SetLen(len(bufs[i]))
		h := &m.hdrs[i].Hdr
		*h = unix.Msghdr{
			Name:    (*byte)(unsafe.Pointer(&m.names[i])),
			Namelen: unix.SizeofSockaddrInet6,
			Iov:     &m.iovs[i],
		}
		h.SetIovlen(1)
		if m.gro {
			h.Control = &m.rcms[i*groSpace]
			h.SetControllen(groSpace)
		}
	}
	m.op = n
	if err := m.rc.Read(m.readFn); err != nil {
		return 0, err
	}
	if m.opErr != nil {
		return 0, m.opErr
	}
	for i := range m.opN {
		h := &m.hdrs[i].Hdr
		ms[i] = Meta{
			N:     int(m.hdrs[i].Len),
			From:  sockaddrToAddrPort(&m.names[i]),
			Trunc: h.Flags&unix.MSG_TRUNC != 0,
		}
		if m.gro && h.Controllen >= uint64(unix.CmsgLen(4)) {
			ms[i].Seg = groSegment(m.rcms[i*groSpace : i*groSpace+int(h.Controllen)])
		}
	}
	return m.opN, nil
}

// groSegment reads the segment size from a UDP_GRO control message, or 0.
// The kernel sends the one message only; anything else is ignored.
func groSegment(c []byte) int {
	ch := (*unix.Cmsghdr)(unsafe.Pointer(&c[0]))
	if ch.Level != unix.SOL_UDP || ch.Type != unix.UDP_GRO || ch.Len < uint64(unix.CmsgLen(4)) {
		return 0
	}
	return int(binary.NativeEndian.Uint32(c[unix.CmsgLen(0):]))
}

// EnableGRO asks the kernel to hand this socket runs of datagrams of one
// flow, coalesced by GRO (UDP_GRO, Linux 5.0+), as one buffer with their
// size in a control message (Meta.Seg), instead of splitting them first:
// a sender's GSO send arrives in one piece. It reports whether the kernel
// took the option; without it reads are as before.
func (m *Conn) EnableGRO(c *net.UDPConn) bool {
	rc, err := c.SyscallConn()
	if err != nil {
		return false
	}
	var serr error
	if err := rc.Control(func(fd uintptr) { serr = unix.SetsockoptInt(int(fd), unix.SOL_UDP, unix.UDP_GRO, 1) }); err != nil || serr != nil {
		return false
	}
	m.gro = true
	if m.rcms == nil {
		m.rcms = make([]byte, len(m.hdrs)*groSpace)
	}
	return true
}

// WriteBatch writes each frame as one datagram to dst. It waits out
// back-pressure (EAGAIN), loops on partial writes, and counts frames the
// kernel refuses (failed, with the first refusal as err) without retrying
// them, except that a refused GSO send is retried frame by frame. Runs of frames of equal length go out
// as one UDP_SEGMENT (GSO) send when GSO is on: the kernel splits them into
// datagrams of that length, one traversal of the stack for up to 64 frames.
//
// The zero dst sends on a connected socket (no address in the headers).
func (m *Conn) WriteBatch(frames [][]byte, dst netip.AddrPort) (failed int, firstErr error) {
	var namelen uint32
	if dst.IsValid() {
		namelen = putSockaddr(&m.dst, dst)
	}
	singles := 0 // frames to send one by one after a refused GSO send
	for i := 0; i < len(frames); {
		nh := m.layout(frames[i:], namelen, &singles)
		sent, err := m.send(nh)
		for k := range sent {
			i += m.counts[k]
		}
		if sent == nh {
			continue
		}
		if !errors.Is(err, errRefused) { // socket closed or poller failure
			return failed + len(frames) - i, err
		}
		cnt := m.counts[sent]
		if cnt > 1 && (errors.Is(m.opErr, unix.EMSGSIZE) || errors.Is(m.opErr, unix.EINVAL) || errors.Is(m.opErr, unix.EIO)) {
			// The kernel refuses GSO when a segment exceeds the path MTU
			// (EMSGSIZE; EINVAL on older kernels) or the device lacks
			// checksum offload (EIO): send these frames singly, where the
			// kernel may fragment, rather than lose them.
			singles = cnt
			m.gsoFallbacks++
			continue
		}
		failed += cnt
		i += cnt
		if firstErr == nil {
			firstErr = m.opErr
		}
	}
	return failed, firstErr
}

// errRefused marks a header the kernel refused; m.opErr says why.
var errRefused = errors.New("refused by the kernel")

// layout fills headers for frames, as many as fit, and returns their number;
// m.counts[k] is the number of frames header k carries.
func (m *Conn) layout(frames [][]byte, namelen uint32, singles *int) int {
	nh, nIov := 0, 0
	for i := 0; i < len(frames) && nh < len(m.hdrs) && nIov < len(m.iovs); {
		run := 1
		if *singles > 0 {
			*singles--
		} else if m.gso {
			run = gsoRun(frames[i:], min(maxGSOSegments, len(m.iovs)-nIov))
		}
		h := &m.hdrs[nh].Hdr
		*h = unix.Msghdr{Namelen: namelen, Iov: &m.iovs[nIov]}
		if namelen != 0 {
			h.Name = (*byte)(unsafe.Pointer(&m.dst))
		}
		h.SetIovlen(run)
		for j := range run {
			f := frames[i+j]
			m.iovs[nIov+j].Base = unsafe.SliceData(f)
			m.iovs[nIov+j].SetLen(len(f))
		}
		if run > 1 {
			c := m.cmsgs[nh*cmsgSpace : (nh+1)*cmsgSpace]
			ch := (*unix.Cmsghdr)(unsafe.Pointer(&c[0]))
			ch.Level, ch.Type = unix.SOL_UDP, unix.UDP_SEGMENT
			ch.SetLen(unix.CmsgLen(2))
			binary.NativeEndian.PutUint16(c[unix.CmsgLen(0):], uint16(len(frames[i])))
			h.Control = &c[0]
			h.SetControllen(cmsgSpace)
		}
		m.counts[nh] = run
		nh++
		nIov += run
		i += run
	}
	return nh
}

// send writes headers 0..nh-1, looping on partial writes and waiting out
// back-pressure. It returns how many were sent; fewer than nh means header
// [sent] was refused (errRefused, reason in m.opErr) or the socket failed.
func (m *Conn) send(nh int) (int, error) {
	for next := 0; next < nh; {
		m.op, m.opN = next, nh-next
		if err := m.rc.Write(m.writeFn); err != nil {
			return next, err
		}
		if m.opErr != nil {
			return next, errRefused
		}
		next += m.opN
	}
	return nh, nil
}

// gsoRun returns how many frames from the start of fs can go in one GSO
// send: frames of the first frame's length, then optionally one shorter
// frame (the kernel allows a short last segment), within the segment and
// byte limits.
func gsoRun(fs [][]byte, limit int) int {
	size := len(fs[0])
	if size == 0 {
		return 1
	}
	limit = min(limit, maxGSOBytes/size, len(fs))
	n := 1
	for n < limit && len(fs[n]) == size {
		n++
	}
	if n < limit && len(fs[n]) < size && len(fs[n]) > 0 {
		n++
	}
	return n
}

func sockaddrToAddrPort(sa *unix.RawSockaddrInet6) netip.AddrPort {
	port := binary.BigEndian.Uint16((*[2]byte)(unsafe.Pointer(&sa.Port))[:])
	switch sa.Family {
	case unix.AF_INET:
		sa4 := (*unix.RawSockaddrInet4)(unsafe.Pointer(sa))
		return netip.AddrPortFrom(netip.AddrFrom4(sa4.Addr), port)
	case unix.AF_INET6:
		return netip.AddrPortFrom(netip.AddrFrom16(sa.Addr), port) // zone dropped: not needed on the wire
	}
	return netip.AddrPort{}
}

func putSockaddr(sa *unix.RawSockaddrInet6, ap netip.AddrPort) uint32 {
	if ap.Addr().Is4() {
		sa4 := (*unix.RawSockaddrInet4)(unsafe.Pointer(sa))
		sa4.Family = unix.AF_INET
		binary.BigEndian.PutUint16((*[2]byte)(unsafe.Pointer(&sa4.Port))[:], ap.Port())
		sa4.Addr = ap.Addr().As4()
		return unix.SizeofSockaddrInet4
	}
	sa.Family = unix.AF_INET6
	binary.BigEndian.PutUint16((*[2]byte)(unsafe.Pointer(&sa.Port))[:], ap.Port())
	sa.Addr = ap.Addr().As16()
	sa.Scope_id = 0
	if z := ap.Addr().Zone(); z != "" {
		if ifi, err := net.InterfaceByName(z); err == nil {
			sa.Scope_id = uint32(ifi.Index)
		}
	}
	return unix.SizeofSockaddrInet6
}

// GSOFallbacks counts GSO sends the kernel refused that were resent singly.
func (m *Conn) GSOFallbacks() uint64 { return m.gsoFallbacks }

// ProbeGSO reports whether the kernel supports UDP_SEGMENT on c (Linux 4.18+).
func ProbeGSO(c *net.UDPConn) bool {
	rc, err := c.SyscallConn()
	if err != nil {
		return false
	}
	ok := false
	_ = rc.Control(func(fd uintptr) {
		_, err := unix.GetsockoptInt(int(fd), unix.SOL_UDP, unix.UDP_SEGMENT)
		ok = err == nil
	})
	return ok
}
