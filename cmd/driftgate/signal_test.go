package main

import (
	"bytes"
	"net"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"driftgate/internal/testkit"
)

// TestMain lets tests run this binary as driftgate itself (the role
// "driftgate": the test binary behaves as the real command).
func TestMain(m *testing.M) {
	testkit.RunRole(map[string]testkit.Role{"driftgate": func(args []string) error {
		os.Exit(run(args, os.Stdout, os.Stderr))
		return nil
	}})
	os.Exit(m.Run())
}

func startSelf(t *testing.T, args ...string) (*exec.Cmd, *bytes.Buffer) {
	t.Helper()
	cmd := testkit.Command(nil, "driftgate", args...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	return cmd, &out
}

// TestSignalSummary runs relay and receive as processes, sends traffic,
// stops both with a signal and checks the summary lines and exit status 0.
func TestSignalSummary(t *testing.T) {
	rx, rxOut := startSelf(t, "receive", "--listen", "127.0.0.1:19101", "--deliver", "udp://127.0.0.1:19102")
	rl, rlOut := startSelf(t, "relay", "--listen", "127.0.0.1:19100", "--unicast", "127.0.0.1:19101", "--epoch", "9")
	app, err := net.ListenPacket("udp", "127.0.0.1:19102")
	if err != nil {
		t.Fatal(err)
	}
	defer app.Close()
	src, err := net.Dial("udp", "127.0.0.1:19100")
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	// Send until the application sees a payload: the processes need a
	// moment to bind.
	buf := make([]byte, 100)
	deadline := time.Now().Add(10 * time.Second)
	sent := 0
	for {
		src.Write([]byte("ping"))
		sent++
		app.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
		n, _, err := app.ReadFrom(buf)
		if err == nil {
			if got := string(buf[:n]); got != "ping" {
				t.Fatalf("application got %q, want the bare payload %q", got, "ping")
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no payload delivered after %d sends\nrelay: %s\nreceive: %s", sent, rlOut, rxOut)
		}
	}
	time.Sleep(100 * time.Millisecond)
	rl.Process.Signal(syscall.SIGTERM)
	rx.Process.Signal(syscall.SIGINT)
	for name, c := range map[string]*exec.Cmd{"relay": rl, "receive": rx} {
		if err := c.Wait(); err != nil {
			t.Errorf("%s exited with %v, want status 0", name, err)
		}
	}
	if !strings.Contains(rlOut.String(), "relay 127.0.0.1:19100: received=") || !strings.Contains(rlOut.String(), "send_error=0") {
		t.Errorf("relay summary missing:\n%s", rlOut)
	}
	if !strings.Contains(rxOut.String(), "receive: received=") || !strings.Contains(rxOut.String(), "epoch=9") {
		t.Errorf("receive summary missing:\n%s", rxOut)
	}
}
