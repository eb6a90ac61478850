package udpbatch

import (
	"bytes"
	"fmt"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"driftgate/internal/netlab"
)

func TestGSORun(t *testing.T) {
	mk := func(sizes ...int) [][]byte {
		var fs [][]byte
		for _, s := range sizes {
			fs = append(fs, make([]byte, s))
		}
		return fs
	}
	big := make([]int, 100)
	for i := range big {
		big[i] = 100
	}
	tests := []struct {
		name  string
		fs    [][]byte
		limit int
		want  int
	}{
		{"single", mk(10), 64, 1},
		{"equal run", mk(10, 10, 10, 20), 64, 3},
		{"short tail joins", mk(10, 10, 5, 10), 64, 3},
		{"longer next ends run", mk(10, 20), 64, 1},
		{"segment limit", mk(big...), 64, 64},
		{"iov limit", mk(10, 10, 10, 10), 2, 2},
		{"byte limit", mk(30000, 30000, 30000), 64, 2},
		{"empty frame alone", mk(0, 0), 64, 1},
		{"empty tail not joined", mk(10, 0), 64, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := gsoRun(tt.fs, tt.limit); got != tt.want {
				t.Fatalf("gsoRun = %d, want %d", got, tt.want)
			}
		})
	}
}

func pair(t *testing.T, network, addr string) (*net.UDPConn, *net.UDPConn) {
	t.Helper()
	rx, err := net.ListenUDP(network, &net.UDPAddr{IP: net.ParseIP(addr)})
	if err != nil {
		t.Fatal(err)
	}
	tx, err := net.ListenUDP(network, &net.UDPAddr{IP: net.ParseIP(addr)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { rx.Close(); tx.Close() })
	rx.SetReadBuffer(8 << 20)
	return rx, tx
}

// readAll reads until want datagrams came or a second passed.
func readAll(t *testing.T, rx *net.UDPConn, want int) ([][]byte, []Meta) {
	t.Helper()
	r, err := New(rx, 16, false)
	if err != nil {
		t.Fatal(err)
	}
	bufs := make([][]byte, 16)
	for i := range bufs {
		bufs[i] = make([]byte, 65536)
	}
	ms := make([]Meta, 16)
	var got [][]byte
	var metas []Meta
	rx.SetReadDeadline(time.Now().Add(time.Second))
	for len(got) < want {
		n, err := r.ReadBatch(bufs, ms)
		if err != nil {
			t.Fatalf("after %d datagrams: %v", len(got), err)
		}
		for i := range n {
			got = append(got, bytes.Clone(bufs[i][:ms[i].N]))
			metas = append(metas, ms[i])
		}
	}
	return got, metas
}

// TestWriteReadBatch sends a batch of mixed runs, with and without GSO, over
// IPv4 and IPv6 loopback, and reads back every datagram, in order and intact.
func TestWriteReadBatch(t *testing.T) {
	for _, tt := range []struct{ network, addr string }{{"udp4", "127.0.0.1"}, {"udp6", "::1"}} {
		for _, gso := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s gso=%v", tt.network, gso), func(t *testing.T) {
				rx, tx := pair(t, tt.network, tt.addr)
				if gso && !ProbeGSO(tx) {
					t.Fatal("kernel lacks UDP_SEGMENT (Linux 4.18+)")
				}
				w, err := New(tx, 64, gso)
				if err != nil {
					t.Fatal(err)
				}
				var frames [][]byte
				sizes := []int{100, 100, 100, 40, 1400, 1400, 7, 9000, 9000, 9000, 1}
				for i := range 300 { // more than one batch of headers
					f := bytes.Repeat([]byte{byte(i)}, sizes[i%len(sizes)])
					frames = append(frames, f)
				}
				dst := rx.LocalAddr().(*net.UDPAddr).AddrPort()
				failed, err := w.WriteBatch(frames, dst)
				if failed != 0 || err != nil {
					t.Fatalf("WriteBatch: failed %d, %v", failed, err)
				}
				got, metas := readAll(t, rx, len(frames))
				for i := range frames {
					if !bytes.Equal(frames[i], got[i]) {
						t.Fatalf("datagram %d: sent %d bytes of %d, read %d bytes starting %x", i, len(frames[i]), i%256, len(got[i]), got[i][:min(8, len(got[i]))])
					}
				}
				from := tx.LocalAddr().(*net.UDPAddr).AddrPort()
				if metas[0].From != netip.AddrPortFrom(from.Addr().Unmap(), from.Port()) || metas[0].Trunc {
					t.Fatalf("meta %+v, want from %s", metas[0], from)
				}
			})
		}
	}
}

func TestTruncatedFlag(t *testing.T) {
	rx, tx := pair(t, "udp4", "127.0.0.1")
	tx.WriteToUDPAddrPort(make([]byte, 100), rx.LocalAddr().(*net.UDPAddr).AddrPort())
	r, _ := New(rx, 4, false)
	ms := make([]Meta, 4)
	n, err := r.ReadBatch([][]byte{make([]byte, 10)}, ms)
	if err != nil || n != 1 || !ms[0].Trunc || ms[0].N != 10 {
		t.Fatalf("n=%d err=%v meta=%+v, want one truncated datagram", n, err, ms[0])
	}
}

func TestRefusedFramesCounted(t *testing.T) {
	_, tx := pair(t, "udp4", "127.0.0.1")
	w, _ := New(tx, 8, false)
	// A datagram over the IPv4 limit is refused with EMSGSIZE; the others
	// of the batch still go out.
	rx2, _ := pair(t, "udp4", "127.0.0.1")
	frames := [][]byte{[]byte("a"), make([]byte, 70000), []byte("b")}
	failed, err := w.WriteBatch(frames, rx2.LocalAddr().(*net.UDPAddr).AddrPort())
	if failed != 1 || err == nil {
		t.Fatalf("failed=%d err=%v, want 1 and EMSGSIZE", failed, err)
	}
	got, _ := readAll(t, rx2, 2)
	if string(got[0]) != "a" || string(got[1]) != "b" {
		t.Fatalf("got %q", got)
	}
}

// TestGSOFallback: with a 1500-byte MTU the kernel refuses GSO segments
// larger than the MTU (EINVAL); WriteBatch must resend those frames singly.
func TestGSOFallback(t *testing.T) {
	lab := netlab.New(t, "h")
	h := lab.Host("h")
	h.IP("link", "set", "lo", "mtu", "1500")
	var rx, tx *net.UDPConn
	err := h.Do(func() error {
		var err error
		if rx, err = net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)}); err != nil {
			return err
		}
		tx, err = net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	defer rx.Close()
	defer tx.Close()
	w, _ := New(tx, 8, true)
	frames := [][]byte{make([]byte, 2000), make([]byte, 2000), make([]byte, 2000), make([]byte, 100), make([]byte, 100)}
	failed, err := w.WriteBatch(frames, rx.LocalAddr().(*net.UDPAddr).AddrPort())
	if failed != 0 || err != nil {
		t.Fatalf("failed=%d err=%v", failed, err)
	}
	if w.GSOFallbacks() != 1 {
		t.Fatalf("GSOFallbacks = %d, want 1", w.GSOFallbacks())
	}
	got, _ := readAll(t, rx, len(frames))
	if diff := cmp.Diff(frames, got); diff != "" {
		t.Fatalf("(-sent +read):\n%.500s", diff)
	}
}

func TestWriteBatchDoesNotAllocate(t *testing.T) {
	rx, tx := pair(t, "udp4", "127.0.0.1")
	w, _ := New(tx, 64, ProbeGSO(tx))
	r, _ := New(rx, 64, false)
	frames := make([][]byte, 64)
	bufs := make([][]byte, 64)
	for i := range frames {
		frames[i] = make([]byte, 200)
		bufs[i] = make([]byte, 2048)
	}
	ms := make([]Meta, 64)
	dst := rx.LocalAddr().(*net.UDPAddr).AddrPort()
	allocs := testing.AllocsPerRun(50, func() {
		if f, err := w.WriteBatch(frames, dst); f != 0 || err != nil {
			t.Fatal(f, err)
		}
		for got := 0; got < len(frames); {
			n, err := r.ReadBatch(bufs, ms)
			if err != nil {
				t.Fatal(err)
			}
			got += n
		}
	})
	if allocs != 0 {
		t.Fatalf("%.1f allocations per 64-datagram write+read, want 0", allocs)
	}
}

// TestGRORead: a GSO send of equal-size datagrams reaches a socket with
// GRO on as one buffer with the segment size, which Next splits back into
// the datagrams, in order and intact; a mixed batch still arrives whole.
func TestGRORead(t *testing.T) {
	rx, tx := pair(t, "udp4", "127.0.0.1")
	w, err := New(tx, 64, true)
	if err != nil {
		t.Fatal(err)
	}
	r, err := New(rx, 16, false)
	if err != nil {
		t.Fatal(err)
	}
	if !r.EnableGRO(rx) {
		t.Skip("kernel refuses UDP_GRO (before Linux 5.0)")
	}
	var frames [][]byte
	for i := range 40 {
		frames = append(frames, bytes.Repeat([]byte{byte(i)}, 300))
	}
	frames = append(frames, []byte("short tail"), bytes.Repeat([]byte{'x'}, 1000), []byte("y"))
	dst := rx.LocalAddr().(*net.UDPAddr).AddrPort()
	if failed, err := w.WriteBatch(frames, dst); failed != 0 {
		t.Fatal(err)
	}
	bufs := make([][]byte, 16)
	for i := range bufs {
		bufs[i] = make([]byte, 65535)
	}
	ms := make([]Meta, 16)
	var got [][]byte
	coalesced := 0
	rx.SetReadDeadline(time.Now().Add(2 * time.Second))
	for len(got) < len(frames) {
		n, err := r.ReadBatch(bufs, ms)
		if err != nil {
			t.Fatalf("after %d datagrams: %v", len(got), err)
		}
		for i := range n {
			if ms[i].Seg > 0 && ms[i].Seg < ms[i].N {
				coalesced++
			}
			for b := bufs[i][:ms[i].N]; len(b) > 0; {
				var d []byte
				d, b = ms[i].Next(b)
				got = append(got, bytes.Clone(d))
			}
		}
	}
	if diff := cmp.Diff(frames, got); diff != "" {
		t.Fatalf("datagrams (-sent +read):\n%s", diff)
	}
	if coalesced == 0 {
		t.Errorf("no buffer held more than one datagram: GRO did not coalesce the GSO send")
	}
}
