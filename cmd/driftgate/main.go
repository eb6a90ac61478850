// Command driftgate is the driftgate daemon and its tools. This file and its
// siblings only parse flags and wire packages together.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"runtime"
	"strings"
	"syscall"

	"github.com/spf13/cobra"
)

// Set by the linker: -X main.version=... -X main.commit=...
var (
	version = "dev"
	commit  = "unknown"
)

// usageError marks bad flags or arguments: exit status 2.
type usageError struct{ err error }

func (e usageError) Error() string { return e.err.Error() }
func (e usageError) Unwrap() error { return e.err }

func usagef(format string, a ...any) error { return usageError{fmt.Errorf(format, a...)} }

// configError marks a configuration the agent cannot run with: exit status
// 78 (EX_CONFIG), which the unit does not restart (RestartPreventExitStatus):
// starting again cannot fix a file. Not 2, which Go's runtime also exits
// with on a panic or on the watchdog's SIGABRT — those must restart.
type configError struct{ err error }

func (e configError) Error() string { return e.err.Error() }
func (e configError) Unwrap() error { return e.err }

const exitConfig = 78

type globals struct {
	logLevel  string
	logFormat string
	level     slog.LevelVar // the logger's level; a reload may change it
}

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	root := newRoot(stdout, stderr)
	root.SetArgs(args)
	err := root.Execute()
	if err == nil {
		return 0
	}
	// Under systemd the final error reaches the journal as an error
	// (priority 3), like the logger's own error lines.
	prefix := ""
	if toJournal() {
		prefix = "<3>"
	}
	fmt.Fprintf(stderr, "%sdriftgate: %v\n", prefix, err)
	var ce configError
	if errors.As(err, &ce) {
		return exitConfig
	}
	var ue usageError
	if errors.As(err, &ue) {
		return 2
	}
	return 1 // including errNoPrimary from status
}

func newRoot(stdout, stderr io.Writer) *cobra.Command {
	g := &globals{}
	root := &cobra.Command{
		Use:           "driftgate",
		Short:         "One service address that never goes dark: Consul-elected floating IP and UDP tee relay",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.SetOut(stdout)
	root.SetErr(stderr)
	root.SetFlagErrorFunc(func(c *cobra.Command, err error) error {
		return usageError{fmt.Errorf("%w (see %s --help)", err, c.CommandPath())}
	})
	root.PersistentFlags().StringVar(&g.logLevel, "log-level", "info", "log level: debug, info, warn, error")
	root.PersistentFlags().StringVar(&g.logFormat, "log-format", "text", "log format: text or json")
	root.AddCommand(newVersionCmd(), newRelayCmd(g), newReceiveCmd(g), newAgentCmd(g), newConfigCmd(), newStatusCmd(), newStepDownCmd(), newCleanupCmd(), newKeyCmd(), newReloadCmd(), newSendCmd(), newEgressCmd(g))
	return root
}

func newVersionCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print version, commit and Go version",
		Args:  cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			fmt.Fprintf(c.OutOrStdout(), "driftgate %s (commit %s, %s %s/%s)\n", version, commit, runtime.Version(), runtime.GOOS, runtime.GOARCH)
			return nil
		},
	}
}

// toJournal: the output goes to the journal (systemd sets JOURNAL_STREAM
// for a unit's stdout and stderr).
func toJournal() bool { return os.Getenv("JOURNAL_STREAM") != "" }

// logger builds the process logger. Under systemd (JOURNAL_STREAM set) the
// journal adds timestamps, so the handler leaves them out, and each line
// carries its syslog priority (journalHandler).
func (g *globals) logger(w io.Writer) (*slog.Logger, error) {
	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(g.logLevel)); err != nil {
		return nil, usagef("--log-level %q: want debug, info, warn or error", g.logLevel)
	}
	g.level.Set(lvl)
	opts := &slog.HandlerOptions{Level: &g.level}
	journal := toJournal()
	if journal {
		opts.ReplaceAttr = func(groups []string, a slog.Attr) slog.Attr {
			if len(groups) == 0 && a.Key == slog.TimeKey {
				return slog.Attr{}
			}
			return a
		}
	}
	var mk func(io.Writer) slog.Handler
	switch strings.ToLower(g.logFormat) {
	case "text":
		mk = func(w io.Writer) slog.Handler { return slog.NewTextHandler(w, opts) }
	case "json":
		mk = func(w io.Writer) slog.Handler { return slog.NewJSONHandler(w, opts) }
	default:
		return nil, usagef("--log-format %q: want text or json", g.logFormat)
	}
	if journal {
		return slog.New(newJournalHandler(w, mk)), nil
	}
	return slog.New(mk(w)), nil
}

// signalContext is cancelled by SIGINT or SIGTERM.
func signalContext() (context.Context, context.CancelFunc) {
	return signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
}
