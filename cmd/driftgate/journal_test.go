package main

import (
	"bytes"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// TestJournalPriorities: under systemd every line starts with its level's
// syslog priority, attributes and groups kept, below-level lines dropped.
func TestJournalPriorities(t *testing.T) {
	t.Setenv("JOURNAL_STREAM", "8:12345")
	var b bytes.Buffer
	g := &globals{logLevel: "debug", logFormat: "text"}
	log, err := g.logger(&b)
	if err != nil {
		t.Fatal(err)
	}
	l := log.With("node", "n1").WithGroup("g")
	l.Debug("d")
	l.Info("i", "k", 1)
	l.Warn("w")
	l.Error("e")
	want := []string{
		`<7>level=DEBUG msg=d node=n1`,
		`<6>level=INFO msg=i node=n1 g.k=1`,
		`<4>level=WARN msg=w node=n1`,
		`<3>level=ERROR msg=e node=n1`,
	}
	if diff := cmp.Diff(want, strings.Split(strings.TrimSpace(b.String()), "\n")); diff != "" {
		t.Fatalf("journal lines (-want +got):\n%s", diff)
	}

	b.Reset()
	g = &globals{logLevel: "warn", logFormat: "json"}
	if log, err = g.logger(&b); err != nil {
		t.Fatal(err)
	}
	log.Info("hidden")
	log.Warn("shown")
	if got := b.String(); !strings.HasPrefix(got, `<4>{"level":"WARN","msg":"shown"}`) || strings.Contains(got, "hidden") {
		t.Fatalf("json at warn: %q", got)
	}
}

// Outside systemd: no prefix.
func TestNoJournalNoPrefix(t *testing.T) {
	t.Setenv("JOURNAL_STREAM", "")
	var b bytes.Buffer
	log, err := (&globals{logLevel: "info", logFormat: "text"}).logger(&b)
	if err != nil {
		t.Fatal(err)
	}
	log.Warn("w")
	if strings.HasPrefix(b.String(), "<") || !strings.Contains(b.String(), "msg=w") {
		t.Fatalf("got %q", b.String())
	}
}

// The final error of a command (a refused reload's config check, say) is
// an error in the journal too.
func TestFinalErrorPriority(t *testing.T) {
	for _, tt := range []struct{ stream, want string }{{"8:12345", "<3>driftgate: "}, {"", "driftgate: "}} {
		t.Setenv("JOURNAL_STREAM", tt.stream)
		var out bytes.Buffer
		if code := run([]string{"config", "check", "--config", "/nonexistent/driftgate.yaml"}, &out, &out); code == 0 || !strings.HasPrefix(out.String(), tt.want) {
			t.Fatalf("JOURNAL_STREAM=%q: exit %d, output %q; want it to start with %q", tt.stream, code, out.String(), tt.want)
		}
	}
}
