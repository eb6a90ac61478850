package gateway

import (
	"bytes"
	"errors"
	"net"
	"net/netip"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func testFrame() (Frame, []byte) {
	h := Header{IngressPort: 5000, Epoch: 3, Seq: 9, Timestamp: 77, Source: netip.MustParseAddrPort("198.18.0.5:4000")}
	raw := NewCodec(nil).AppendFrame(nil, h, []byte("hi"))
	f, _ := NewCodec(nil).Decode(raw)
	return f, raw
}

// unixApp is an application's unix datagram socket and a deliverer to it;
// both are closed when the test ends.
func unixApp(t *testing.T) (*net.UnixConn, string, Deliverer) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "app.sock")
	app, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { app.Close() })
	d, err := ParseDeliver("unix://"+path, OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	return app, path, d
}

// udpApp is an application's UDP socket on loopback and a udp://
// deliverer to it; both are closed when the test ends.
func udpApp(t *testing.T) (*net.UDPConn, Deliverer) {
	t.Helper()
	app, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { app.Close() })
	d, err := ParseDeliver("udp://"+app.LocalAddr().String(), OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	return app, d
}

func TestDeliverUnix(t *testing.T) {
	app, path, d := unixApp(t)
	f, raw := testFrame()
	if err := d.Deliver(&f, raw); err != nil {
		t.Fatal(err)
	}
	d.Flush()
	buf := make([]byte, 1000)
	app.SetReadDeadline(time.Now().Add(2 * time.Second))
	n, err := app.Read(buf)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(buf[:n], raw) {
		t.Fatalf("unix delivery got %x, want the whole frame %x", buf[:n], raw)
	}
	// An application that stops reading: the queue holds what it cannot
	// take, up to its bound; then datagrams are dropped and counted. The
	// receiver is never blocked.
	d2, err := ParseDeliver("unix://"+path, OpenOptions{Queue: QueueConfig{Frames: 50}})
	if err != nil {
		t.Fatal(err)
	}
	defer d2.Close()
	start := time.Now()
	var full error
	sent := 0
	for range 100000 {
		if err := d2.Deliver(&f, raw); err != nil {
			full = err
			break
		}
		d2.Flush()
		sent++
	}
	if !errors.Is(full, ErrQueueFull) {
		t.Fatalf("full queue: err %v, want ErrQueueFull", full)
	}
	if time.Since(start) > 2*time.Second {
		t.Fatalf("delivery blocked for %v", time.Since(start))
	}
	// What the socket took, and the queue's 50.
	if sent < 50 {
		t.Fatalf("only %d datagrams accepted before the queue was full", sent)
	}
	st := d2.(DeliveryStatser).DeliveryStats()
	if st.Depth == 0 || st.Depth > 50 || st.Dropped["queue_full"] != 1 {
		t.Fatalf("stats %+v: want 1..50 queued and 1 queue_full drop", st)
	}
}

// A 200 ms application stall at 10k datagrams/s loses nothing: the queue
// holds the 2000 datagrams and hands them over, in order, when the
// application reads again.
func TestDeliverSurvivesStall(t *testing.T) {
	app, _, d := unixApp(t)
	const n = 2000
	codec := NewCodec(nil)
	h := Header{Epoch: 1, Source: netip.MustParseAddrPort("198.18.0.5:4000")}
	var raw []byte
	for i := range n {
		h.Seq = uint64(i + 1)
		raw = codec.AppendFrame(raw[:0], h, []byte("payload"))
		f, _ := codec.Decode(raw)
		if err := d.Deliver(&f, raw); err != nil {
			t.Fatalf("datagram %d: %v", i+1, err)
		}
		if i%10 == 9 {
			d.Flush()
			time.Sleep(time.Millisecond) // 10 per ms, the application asleep throughout
		}
	}
	buf := make([]byte, 1000)
	for i := range n {
		app.SetReadDeadline(time.Now().Add(5 * time.Second))
		m, err := app.Read(buf)
		if err != nil {
			t.Fatalf("after %d datagrams: %v", i, err)
		}
		f, err := codec.Decode(buf[:m])
		if err != nil || f.Seq != uint64(i+1) {
			t.Fatalf("datagram %d: seq %d, err %v", i+1, f.Seq, err)
		}
	}
	st := d.(DeliveryStatser).DeliveryStats()
	if st.Written != n || st.Dropped["queue_full"] != 0 || st.Dropped["write_error"] != 0 {
		t.Fatalf("stats %+v: want %d written, none dropped", st, n)
	}
}

func TestDeliverUDPPayloadOnly(t *testing.T) {
	app, d := udpApp(t)
	f, raw := testFrame()
	if err := d.Deliver(&f, raw); err != nil {
		t.Fatal(err)
	}
	d.Flush()
	buf := make([]byte, 100)
	app.SetReadDeadline(time.Now().Add(2 * time.Second))
	n, err := app.Read(buf)
	if err != nil || string(buf[:n]) != "hi" {
		t.Fatalf("got %q, %v; want the payload alone", buf[:n], err)
	}
}

func TestDeliverJSON(t *testing.T) {
	var out strings.Builder
	d, err := ParseDeliver("stdout", OpenOptions{Stdout: &out})
	if err != nil {
		t.Fatal(err)
	}
	f, raw := testFrame()
	d.Deliver(&f, raw)
	d.Flush()
	want := `{"epoch":3,"seq":9,"source":"198.18.0.5:4000","ingress_port":5000,"timestamp":77,"payload":"6869"}` + "\n"
	if out.String() != want {
		t.Fatalf("got  %s\nwant %s", out.String(), want)
	}
}

func TestParseDeliverErrors(t *testing.T) {
	for _, tt := range []struct{ in, want string }{
		{"ftp://x", `want udp://IP:PORT, unix:///PATH or stdout`},
		{"udp://localhost:5", "want udp://IP:PORT"},
		{"udp://127.0.0.1:0", "want udp://IP:PORT"},
		{"unix://", "want unix:///path"},
		{"unix:///nonexistent/dir/sock", "no such file"},
	} {
		_, err := ParseDeliver(tt.in, OpenOptions{})
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("ParseDeliver(%q) = %v, want error containing %q", tt.in, err, tt.want)
		}
	}
}

// TestParseDeliverURL: the forms the one parser accepts, as given.
func TestParseDeliverURL(t *testing.T) {
	for _, in := range []string{"stdout", "-", "udp://127.0.0.1:6000", "udp://[::1]:6000", "unix:///run/app.sock", "unixgram:///run/app.sock"} {
		d, err := ParseDeliverURL(in)
		if err != nil || d.String() != in {
			t.Errorf("ParseDeliverURL(%q) = %q, %v; want it accepted as given", in, d, err)
		}
	}
	if _, err := (DeliverURL{}).Open(OpenOptions{}); err == nil {
		t.Error("the zero DeliverURL opened")
	}
}

// Batched UDP delivery: runs of equal sizes go out as GSO sends, which the
// application must still read as the datagrams they were, in order, each
// with its own size; a batch longer than one system call and a mixed tail
// too. The whole frame of each goes to a unix socket just the same.
func TestDeliverBatches(t *testing.T) {
	app, d := udpApp(t)
	uapp, _, ud := unixApp(t)
	codec := NewCodec(nil)
	var sizes []int
	for range deliverBatch + 10 { // more than a socket buffer of 208 KiB holds is lost on loopback
		sizes = append(sizes, 512)
	}
	sizes = append(sizes, 64, 1400, 1400, 7, 1400, 64)
	var raws [][]byte
	for i, n := range sizes {
		p := bytes.Repeat([]byte{byte(i)}, n)
		raw := codec.AppendFrame(nil, Header{Epoch: 1, Seq: uint64(i + 1)}, p)
		f, _ := codec.Decode(raw)
		if err := d.Deliver(&f, raw); err != nil {
			t.Fatal(err)
		}
		if err := ud.Deliver(&f, raw); err != nil {
			t.Fatal(err)
		}
		raws = append(raws, raw)
	}
	d.Flush()
	ud.Flush()
	buf := make([]byte, 2000)
	for i, n := range sizes {
		app.SetReadDeadline(time.Now().Add(5 * time.Second))
		m, err := app.Read(buf)
		if err != nil {
			t.Fatalf("udp datagram %d: %v", i, err)
		}
		if want := bytes.Repeat([]byte{byte(i)}, n); !bytes.Equal(buf[:m], want) {
			t.Fatalf("udp datagram %d: %d bytes of %x, want %d of %x", i, m, buf[:min(m, 4)], n, byte(i))
		}
		uapp.SetReadDeadline(time.Now().Add(5 * time.Second))
		m, err = uapp.Read(buf)
		if err != nil || !bytes.Equal(buf[:m], raws[i]) {
			t.Fatalf("unix datagram %d: %d bytes, err %v; want frame %d", i, m, err, i+1)
		}
	}
	if st := d.(DeliveryStatser).DeliveryStats(); st.Written != uint64(len(sizes)) {
		t.Fatalf("stats %+v: want %d written", st, len(sizes))
	}
}
