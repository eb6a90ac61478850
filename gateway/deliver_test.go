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

func TestDeliverUnix(t *testing.T) {
	path := filepath.Join(t.TempDir(), "app.sock")
	app, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer app.Close()
	d, err := ParseDeliver("unix://"+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	f, raw := testFrame()
	if err := d.Deliver(&f, raw); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 1000)
	app.SetReadDeadline(time.Now().Add(2 * time.Second))
	n, err := app.Read(buf)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(buf[:n], raw) {
		t.Fatalf("unix delivery got %x, want the whole frame %x", buf[:n], raw)
	}
	// An application that stops reading loses datagrams; the receiver is
	// never blocked.
	start := time.Now()
	var busy error
	for range 100000 {
		if err := d.Deliver(&f, raw); err != nil {
			busy = err
			break
		}
	}
	if !errors.Is(busy, ErrAppBusy) {
		t.Fatalf("full application socket: err %v, want ErrAppBusy", busy)
	}
	if time.Since(start) > 2*time.Second {
		t.Fatalf("delivery blocked for %v", time.Since(start))
	}
}

func TestDeliverUDPPayloadOnly(t *testing.T) {
	app, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer app.Close()
	d, err := ParseDeliver("udp://"+app.LocalAddr().String(), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	f, raw := testFrame()
	if err := d.Deliver(&f, raw); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 100)
	app.SetReadDeadline(time.Now().Add(2 * time.Second))
	n, err := app.Read(buf)
	if err != nil || string(buf[:n]) != "hi" {
		t.Fatalf("got %q, %v; want the payload alone", buf[:n], err)
	}
}

func TestDeliverJSON(t *testing.T) {
	var out strings.Builder
	d, err := ParseDeliver("stdout", &out)
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
		_, err := ParseDeliver(tt.in, nil)
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
	if _, err := (DeliverURL{}).Open(nil); err == nil {
		t.Error("the zero DeliverURL opened")
	}
}
