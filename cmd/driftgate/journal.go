package main

import (
	"context"
	"io"
	"log/slog"
)

// journalHandler prefixes every record with the syslog priority of its
// level ("<3>" error, "<4>" warning, "<6>" info, "<7>" debug), which
// systemd reads from a service's output stream (SyslogLevelPrefix=, on by
// default): without it every line reaches the journal at the stream's
// default priority, and `journalctl -p warning` shows nothing. One
// underlying handler per priority, each writing through its prefix, so the
// format stays the text or JSON handler's own.
type journalHandler struct {
	byLevel [4]slog.Handler // error, warning, info, debug
}

// newJournalHandler builds a handler for w with mk making the underlying
// one (slog.NewTextHandler or slog.NewJSONHandler with the options).
func newJournalHandler(w io.Writer, mk func(io.Writer) slog.Handler) *journalHandler {
	var h journalHandler
	for i, p := range []string{"<3>", "<4>", "<6>", "<7>"} {
		h.byLevel[i] = mk(&prefixWriter{w: w, prefix: []byte(p)})
	}
	return &h
}

func (h *journalHandler) pick(l slog.Level) slog.Handler {
	switch {
	case l >= slog.LevelError:
		return h.byLevel[0]
	case l >= slog.LevelWarn:
		return h.byLevel[1]
	case l >= slog.LevelInfo:
		return h.byLevel[2]
	}
	return h.byLevel[3]
}

func (h *journalHandler) Enabled(ctx context.Context, l slog.Level) bool {
	return h.pick(l).Enabled(ctx, l)
}

func (h *journalHandler) Handle(ctx context.Context, r slog.Record) error {
	return h.pick(r.Level).Handle(ctx, r)
}

func (h *journalHandler) WithAttrs(as []slog.Attr) slog.Handler {
	var n journalHandler
	for i, b := range h.byLevel {
		n.byLevel[i] = b.WithAttrs(as)
	}
	return &n
}

func (h *journalHandler) WithGroup(name string) slog.Handler {
	var n journalHandler
	for i, b := range h.byLevel {
		n.byLevel[i] = b.WithGroup(name)
	}
	return &n
}

// prefixWriter writes prefix before each write: the standard handlers
// write one record, whole, per call.
type prefixWriter struct {
	w      io.Writer
	prefix []byte
}

func (p *prefixWriter) Write(b []byte) (int, error) {
	buf := make([]byte, 0, len(p.prefix)+len(b))
	buf = append(append(buf, p.prefix...), b...)
	if _, err := p.w.Write(buf); err != nil {
		return 0, err
	}
	return len(b), nil
}
