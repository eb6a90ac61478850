package main

import (
	"bytes"
	"strings"
	"testing"
)

func TestExitCodes(t *testing.T) {
	tests := []struct {
		name     string
		args     []string
		wantCode int
		wantOut  string // substring of stdout+stderr
	}{
		{"version", []string{"version"}, 0, "driftgate dev (commit unknown, go1."},
		{"unknown flag", []string{"relay", "--bogus"}, 2, "unknown flag: --bogus"},
		{"unknown command", []string{"fly"}, 1, `unknown command "fly"`},
		{"relay no listen", []string{"relay", "--group", "239.255.0.1:5001"}, 2, "--listen is required"},
		{"relay bad listen", []string{"relay", "--listen", "198.18.0.1"}, 2, `--listen "198.18.0.1": want IP:PORT`},
		{"relay port 0", []string{"relay", "--listen", "198.18.0.1:0", "--group", "239.255.0.1:5001"}, 2, "port 0 is not allowed"},
		{"relay no destination", []string{"relay", "--listen", "127.0.0.1:5000"}, 2, "no destination"},
		{"relay group not multicast", []string{"relay", "--listen", "127.0.0.1:5000", "--group", "198.18.0.1:5001"}, 2, "not a multicast address"},
		{"relay bad allow", []string{"relay", "--listen", "127.0.0.1:5000", "--group", "239.255.0.1:5001", "--allow", "10.0.0.0/33"}, 2, `--allow "10.0.0.0/33"`},
		{"relay missing key file", []string{"relay", "--listen", "127.0.0.1:5000", "--group", "239.255.0.1:5001", "--key-file", "/nonexistent/key"}, 2, "--key-file: opening key file"},
		{"relay bad ttl", []string{"relay", "--listen", "127.0.0.1:5000", "--group", "239.255.0.1:5001", "--ttl", "300"}, 2, "ttl: 300 is out of range"},
		{"relay bad log level", []string{"relay", "--listen", "127.0.0.1:5000", "--group", "239.255.0.1:5001", "--log-level", "loud"}, 2, `--log-level "loud"`},
		{"receive both", []string{"receive", "--group", "239.255.0.1:5001", "--listen", "127.0.0.1:5001", "--deliver", "stdout"}, 2, "exactly one of --group and --listen"},
		{"receive no deliver", []string{"receive", "--listen", "127.0.0.1:5001"}, 2, "--deliver is required"},
		{"receive bad deliver", []string{"receive", "--listen", "127.0.0.1:5001", "--deliver", "ftp://x"}, 2, "want udp://IP:PORT, unix:///PATH or stdout"},
		{"receive bad udp deliver", []string{"receive", "--listen", "127.0.0.1:5001", "--deliver", "udp://localhost"}, 2, "want udp://IP:PORT"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var out bytes.Buffer
			code := run(tt.args, &out, &out)
			if code != tt.wantCode || !strings.Contains(out.String(), tt.wantOut) {
				t.Fatalf("run(%q) = %d, output:\n%s\nwant %d and output containing %q", tt.args, code, out.String(), tt.wantCode, tt.wantOut)
			}
		})
	}
}
