package main

import (
	"bytes"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"driftgate/internal/config"
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
		{"send not loopback", []string{"send", "--egress", "198.18.0.1:7100", "-", "x"}, 2, `--egress: "198.18.0.1:7100": not a loopback address`},
		{"send no egress", []string{"send", "-", "x"}, 2, "--egress is required"},
		{"send bad dest", []string{"send", "--egress", "127.0.0.1:7100", "198.18.2.1", "x"}, 2, `--DEST "198.18.2.1": want IP:PORT`},
		{"send raw with dest", []string{"send", "--egress", "127.0.0.1:7100", "--raw", "198.18.2.1:9", "x"}, 2, "--raw: the payload goes alone"},
		{"send one argument", []string{"send", "--egress", "127.0.0.1:7100", "x"}, 2, "want DEST and PAYLOAD, got 1 argument(s)"},
		{"egress no allow", []string{"egress", "--listen", "127.0.0.1:7100", "--source", "127.0.0.1:7200", "--to", "198.18.2.1:9"}, 2, "allow: at least one destination prefix"},
		{"egress destination outside allow", []string{"egress", "--listen", "127.0.0.1:7100", "--source", "127.0.0.1:7200", "--to", "198.18.2.1:9", "--allow", "198.18.3.0/24"}, 2, "listen[0].destination: 198.18.2.1:9 is outside allow"},
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

// TestUnitCommands runs the packaged unit's command lines as systemd would,
// with the configuration path pointed at a test file: ExecReload exactly
// (exit 0 for a valid file, 2 naming the key for a broken one), and the
// flags of ExecStart and ExecStopPost (with --help, which runs nothing).
func TestUnitCommands(t *testing.T) {
	unit, err := os.ReadFile("../../packaging/driftgate.service")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	good, bad := filepath.Join(dir, "good.yaml"), filepath.Join(dir, "bad.yaml")
	os.WriteFile(good, []byte(config.ExampleWithVIP()), 0o644)
	os.WriteFile(bad, []byte(config.ExampleWithVIP()+"\nbogus: 1\n"), 0o644)
	lines := map[string][]string{}
	for _, l := range strings.Split(string(unit), "\n") {
		if k, v, ok := strings.Cut(l, "="); ok && strings.HasPrefix(k, "Exec") {
			f := strings.Fields(v)
			if len(f) == 0 || f[0] != "/usr/bin/driftgate" {
				t.Fatalf("%s runs %q, not /usr/bin/driftgate", k, v)
			}
			lines[k] = f[1:]
		}
	}
	with := func(args []string, path string) []string {
		out := slices.Clone(args)
		for i, a := range out {
			out[i] = strings.ReplaceAll(a, config.DefaultPath, path)
		}
		return out
	}
	for _, k := range []string{"ExecStart", "ExecReload", "ExecStopPost"} {
		if !slices.Contains(lines[k], config.DefaultPath) {
			t.Fatalf("%s %q does not name %s", k, lines[k], config.DefaultPath)
		}
	}
	for _, tt := range []struct {
		name     string
		args     []string
		wantCode int
		wantOut  string
	}{
		// A valid file goes to the agent, on the socket the file names.
		{"ExecReload, valid file, no agent", with(lines["ExecReload"], good), 1, "asking the agent on /run/driftgate/control.sock"},
		{"ExecReload, broken file", with(lines["ExecReload"], bad), exitConfig, "unknown key(s): bogus"},
		{"ExecStart flags", append(with(lines["ExecStart"], good), "--help"), 0, "Usage:"},
		{"ExecStopPost flags", append(with(lines["ExecStopPost"], good), "--help"), 0, "Usage:"},
	} {
		var out bytes.Buffer
		if code := run(tt.args, &out, &out); code != tt.wantCode || !strings.Contains(out.String(), tt.wantOut) {
			t.Errorf("%s: driftgate %q = %d, output:\n%s\nwant %d and output containing %q", tt.name, tt.args, code, out.String(), tt.wantCode, tt.wantOut)
		}
	}
}

// TestAgentMetricsPortTaken: with metrics.address in use the agent stops
// at once with an error naming it, before it touches the system (it has
// not started: no VIP clean-up, no Consul).
func TestAgentMetricsPortTaken(t *testing.T) {
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	cfg := filepath.Join(t.TempDir(), "driftgate.yaml")
	os.WriteFile(cfg, []byte(config.ExampleWithVIP()), 0o644)
	var out bytes.Buffer
	start := time.Now()
	code := run([]string{"agent", "--config", cfg, "--node", "metrics-port-test", "--metrics-address", taken.Addr().String()}, &out, &out)
	if code != 1 || !strings.Contains(out.String(), "metrics.address "+taken.Addr().String()) || !strings.Contains(out.String(), "address already in use") {
		t.Fatalf("agent with the metrics port taken: exit %d, output:\n%s\nwant 1 naming metrics.address", code, out.String())
	}
	if strings.Contains(out.String(), "registering") || strings.Contains(out.String(), "clean-up") {
		t.Fatalf("the agent started before failing:\n%s", out.String())
	}
	if took := time.Since(start); took > 5*time.Second {
		t.Fatalf("took %v to fail", took)
	}
}
