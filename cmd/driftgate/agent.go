package main

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/coreos/go-systemd/v22/daemon"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/spf13/cobra"
	"golang.org/x/sync/errgroup"

	"driftgate/consul"
	"driftgate/internal/agent"
	"driftgate/internal/config"
)

// sdNotifier sends sd_notify messages; without NOTIFY_SOCKET it does nothing.
type sdNotifier struct{}

func (sdNotifier) Notify(state string) { daemon.SdNotify(false, state) }

func configFlag(c *cobra.Command, path *string) {
	c.Flags().StringVarP(path, "config", "c", config.DefaultPath, "configuration file")
}

func loadConfig(c *cobra.Command, path string) (*config.Config, error) {
	cfg, err := config.Load(path, c.Flags())
	if err != nil {
		return nil, configError{err}
	}
	return cfg, nil
}

func newAgentCmd(g *globals) *cobra.Command {
	var path string
	c := &cobra.Command{
		Use:   "agent [--config FILE]",
		Short: "Run the daemon: election, VIP, relay and receiver",
		Long: `agent takes part in the Consul election; as primary it holds the VIPs,
announces them and relays every datagram to all servers; on every node it
receives the feed. SIGTERM or SIGINT: a primary steps down cleanly (drops the
VIP, releases the lock so a standby takes over at once), deregisters, exits 0.
SIGHUP: checks the configuration file again and logs whether it is valid;
the agent keeps running with the configuration it started with.`,
		Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			cfg, err := loadConfig(c, path)
			if err != nil {
				return err
			}
			g.logLevel, g.logFormat = cfg.Log.Level, cfg.Log.Format
			log, err := g.logger(c.ErrOrStderr())
			if err != nil {
				return err
			}
			a, err := agent.New(cfg, log.With("node", cfg.Node), sdNotifier{})
			if err != nil {
				return configError{err} // what the file names: keys, destinations, Consul's address
			}
			unlock, err := a.Lock()
			if err != nil {
				return err
			}
			defer unlock()
			// The metrics port is taken before the agent starts: if it is
			// in use, nothing has been touched yet.
			var ln net.Listener
			if cfg.Metrics.Address != "" {
				if ln, err = net.Listen("tcp", cfg.Metrics.Address); err != nil {
					return fmt.Errorf("metrics.address %s: %w", cfg.Metrics.Address, err)
				}
				defer ln.Close()
			}
			var ctl net.Listener
			if cfg.Control.Socket != "" {
				if ctl, err = listenControl(cfg.Control.Socket); err != nil {
					return err
				}
				defer ctl.Close() // removes the file
			}
			reg := prometheus.NewRegistry()
			reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
				collectors.NewBuildInfoCollector())
			build := prometheus.NewGauge(prometheus.GaugeOpts{Name: "driftgate_build_info", Help: "Build information.",
				ConstLabels: prometheus.Labels{"version": version, "commit": commit}})
			build.Set(1)
			reg.MustRegister(build)

			ctx, stop := signalContext()
			defer stop()
			grp, gctx := errgroup.WithContext(ctx)
			grp.Go(func() error { return a.Run(gctx) })
			// A reload (SIGHUP, or POST /reload on the control socket,
			// which `driftgate reload` and the unit's ExecReload use)
			// reads the file again and applies what can change without a
			// step-down; an invalid file changes nothing (a bad file must
			// never cost a primary its VIP), and what needs a restart is
			// reported.
			live := cfg
			var swapMetrics func(string) error // set below, once the servers can start
			var reloadMu sync.Mutex            // SIGHUP and the control socket
			reload := func(ctx context.Context) (agent.ReloadReport, error) {
				reloadMu.Lock()
				defer reloadMu.Unlock()
				nc, err := config.Load(path, c.Flags())
				if err != nil {
					log.Error("reload: the configuration file is invalid; nothing changed", "err", err)
					return agent.ReloadReport{}, configError{err}
				}
				rep, err := a.Apply(ctx, nc)
				if err != nil {
					log.Error("reload failed; nothing changed", "err", err)
					return agent.ReloadReport{}, err
				}
				if nc.Log.Level != live.Log.Level {
					var lvl slog.Level
					_ = lvl.UnmarshalText([]byte(nc.Log.Level)) // validated by Load
					g.level.Set(lvl)
					rep.Applied = append(rep.Applied, "Log.Level")
				}
				if nc.Log.Format != live.Log.Format {
					rep.Restart = append(rep.Restart, "Log.Format")
				}
				// What runs now: the new file but for what it could not apply.
				running := *nc
				running.Log.Format, running.Control = live.Log.Format, live.Control
				if nc.Metrics.Address != live.Metrics.Address {
					if swapMetrics == nil {
						rep.Restart = append(rep.Restart, "Metrics.Address (the agent is still starting)")
						running.Metrics = live.Metrics
					} else if err := swapMetrics(nc.Metrics.Address); err != nil {
						rep.Restart = append(rep.Restart, "Metrics.Address ("+err.Error()+")")
						running.Metrics = live.Metrics
					} else {
						rep.Applied = append(rep.Applied, "Metrics.Address")
					}
				}
				if nc.Control.Socket != live.Control.Socket {
					rep.Restart = append(rep.Restart, "Control.Socket")
				}
				live = &running
				if len(rep.Restart) > 0 {
					log.Warn("reload: applied what can change without a restart", "report", rep.String())
				} else {
					log.Info("reload", "report", rep.String())
				}
				return rep, nil
			}
			hup := make(chan os.Signal, 1)
			signal.Notify(hup, syscall.SIGHUP)
			defer signal.Stop(hup)
			grp.Go(func() error {
				for {
					select {
					case <-gctx.Done():
						return nil
					case <-hup:
						rctx, cancel := context.WithTimeout(gctx, 15*time.Second)
						reload(rctx)
						cancel()
					}
				}
			})
			// serve runs an HTTP server on ln until the agent stops or
			// stop is called (a reload moved the metrics listener).
			serve := func(ln net.Listener, h http.Handler) (stop func()) {
				srv := &http.Server{Handler: h, ReadHeaderTimeout: 5 * time.Second}
				grp.Go(func() error {
					if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
						return err
					}
					return nil
				})
				shutdown := func() {
					sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
					defer cancel()
					srv.Shutdown(sctx)
				}
				done := make(chan struct{})
				grp.Go(func() error {
					select {
					case <-gctx.Done():
						shutdown()
					case <-done:
					}
					return nil
				})
				return func() { close(done); shutdown() }
			}
			metricsHandler := a.Handler(reg) // read-only
			var stopMetrics func()
			if ln != nil {
				stopMetrics = serve(ln, metricsHandler)
			}
			// swapMetrics moves the metrics listener (a reload): the new
			// address is opened first, so a taken one changes nothing.
			swap := func(addr string) error {
				var nl net.Listener
				if addr != "" {
					var err error
					if nl, err = net.Listen("tcp", addr); err != nil {
						return err
					}
				}
				if stopMetrics != nil {
					stopMetrics()
					stopMetrics = nil
				}
				if nl != nil {
					stopMetrics = serve(nl, metricsHandler)
				}
				return nil
			}
			reloadMu.Lock() // a SIGHUP may have come already
			swapMetrics = swap
			reloadMu.Unlock()
			if ctl != nil {
				serve(ctl, a.ControlHandler(reload))
			}
			// The watchdog is fed only while the agent's loop is healthy.
			if wd, err := daemon.SdWatchdogEnabled(false); err == nil && wd > 0 {
				grp.Go(func() error {
					t := time.NewTicker(wd / 2)
					defer t.Stop()
					for {
						select {
						case <-gctx.Done():
							return nil
						case <-t.C:
							if a.Healthy() {
								daemon.SdNotify(false, daemon.SdNotifyWatchdog)
							}
						}
					}
				})
			}
			return grp.Wait()
		},
	}
	configFlag(c, &path)
	c.Flags().String("node", "", "override node")
	c.Flags().String("metrics-address", "", "override metrics.address")
	return c
}

func newConfigCmd() *cobra.Command {
	c := &cobra.Command{Use: "config", Short: "Check or print configuration"}
	var path string
	check := &cobra.Command{
		Use:   "check [--config FILE | FILE]",
		Short: "Validate a configuration file and print the effective configuration",
		Args:  cobra.MaximumNArgs(1),
		RunE: func(c *cobra.Command, args []string) error {
			if len(args) == 1 {
				if c.Flags().Changed("config") && args[0] != path {
					return usagef("config check: give the file once, as --config or as an argument (got %s and %s)", path, args[0])
				}
				path = args[0]
			}
			cfg, err := config.Load(path, nil)
			if err != nil {
				return configError{err}
			}
			enc := json.NewEncoder(c.OutOrStdout())
			enc.SetIndent("", "  ")
			fmt.Fprintf(c.ErrOrStderr(), "%s: valid\n", path)
			return enc.Encode(cfg.Effective())
		},
	}
	example := &cobra.Command{
		Use:   "example",
		Short: "Print the commented reference configuration",
		Args:  cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			_, err := io.WriteString(c.OutOrStdout(), config.Example)
			return err
		},
	}
	configFlag(check, &path)
	c.AddCommand(check, example)
	return c
}

func newStepDownCmd() *cobra.Command {
	var path, socket string
	c := &cobra.Command{
		Use:   "step-down [--socket PATH | --config FILE]",
		Short: "Ask the local primary to hand over to a standby",
		Long: `step-down asks the local agent, over its control socket (a member of the
driftgate group needs no root), to end its term: the VIP goes at once and a
standby takes over; this node stays standby for election.step_down_hold_off.`,
		Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			sock, err := controlSocket(c, socket, path)
			if err != nil {
				return err
			}
			body, err := postControl(sock, "step-down", 15*time.Second)
			if err != nil {
				return err
			}
			fmt.Fprint(c.OutOrStdout(), string(body))
			return nil
		},
	}
	configFlag(c, &path)
	c.Flags().StringVar(&socket, "socket", config.DefaultControlSocket, "the agent's control socket")
	return c
}

// errNoPrimary makes `status` exit 1 when no node holds the lock.
var errNoPrimary = errors.New("no primary")

// listenControl opens the control socket at path: mode 0660 in a
// directory of at most 0750 (the unit's RuntimeDirectory), so that only
// the agent's user and group reach it. A socket file nobody answers on is
// one a killed agent left: removed. One that answers belongs to a running
// agent: refused.
func listenControl(path string) (net.Listener, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o750); err != nil {
		return nil, fmt.Errorf("control.socket %s: %w", path, err)
	}
	if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
		c.Close()
		return nil, fmt.Errorf("control.socket %s: another agent answers there", path)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("control.socket %s: removing a stale socket: %w", path, err)
	}
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("control.socket %s: %w", path, err)
	}
	if err := os.Chmod(path, 0o660); err != nil {
		ln.Close()
		return nil, fmt.Errorf("control.socket %s: %w", path, err)
	}
	return ln, nil
}

// controlClient talks HTTP to the agent over its control socket.
func controlClient(path string, timeout time.Duration) *http.Client {
	return &http.Client{Timeout: timeout, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", path)
		}}}
}

// controlSocket is the socket the CLI talks to: --socket if given, else
// the one the configuration names if --config was given, else the
// packaged default — so an operator in the driftgate group needs to read
// neither the configuration nor a token.
func controlSocket(c *cobra.Command, socket, path string) (string, error) {
	if c.Flags().Changed("socket") || !c.Flags().Changed("config") {
		return socket, nil
	}
	cfg, err := loadConfig(c, path)
	if err != nil {
		return "", err
	}
	if cfg.Control.Socket == "" {
		return "", usagef("control.socket is off in %s: the agent takes no commands", path)
	}
	return cfg.Control.Socket, nil
}

// postControl POSTs to the agent's action on its control socket; a non-200
// answer is an error carrying the agent's reason (configError for 422: a
// file the agent would not take).
func postControl(sock, action string, timeout time.Duration) ([]byte, error) {
	resp, err := controlClient(sock, timeout).Post("http://agent/"+action, "text/plain", nil)
	if err != nil {
		return nil, fmt.Errorf("asking the agent on %s: %w", sock, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	switch resp.StatusCode {
	case http.StatusOK:
		return body, nil
	case http.StatusUnprocessableEntity:
		return nil, configError{fmt.Errorf("agent on %s: %s", sock, strings.TrimSpace(string(body)))}
	}
	return nil, fmt.Errorf("agent on %s: %s", sock, strings.TrimSpace(string(body)))
}

func newStatusCmd() *cobra.Command {
	var (
		path, socket string
		asJSON       bool
	)
	c := &cobra.Command{
		Use:   "status [--json] [--socket PATH | --config FILE]",
		Short: "Show the primary, epoch, every node's role and health, and this node's state",
		Long: `status asks the local agent over its control socket for the election as
Consul shows it and for this node's state (a member of the driftgate group
needs no root, nor the configuration). If the agent does not answer, it reads
the election from Consul itself, with the configuration's address and token.
Exit status: 0 when a primary exists, 1 when none does (or on error).`,
		Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			sock, err := controlSocket(c, socket, path)
			if err != nil {
				return err
			}
			var (
				st    consul.Status
				local *agent.State
			)
			hc := controlClient(sock, 6*time.Second)
			if aerr := getJSON(hc, "http://agent/cluster", &st); aerr == nil {
				var s agent.State
				if getJSON(hc, "http://agent/status", &s) == nil {
					local = &s
				}
			} else {
				// The agent is down, or not reachable: Consul itself.
				cfg, err := loadConfig(c, path)
				if err != nil {
					return fmt.Errorf("the agent does not answer on %s (%v), and reading Consul needs the configuration: %w", sock, aerr, err)
				}
				fmt.Fprintf(c.ErrOrStderr(), "driftgate: the agent does not answer on %s (%v); reading Consul at %s\n", sock, aerr, cfg.Consul.Address)
				client, err := consul.NewClient(cfg.Consul.ClientConfig)
				if err != nil {
					return err
				}
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				defer cancel()
				if st, err = consul.ReadStatus(ctx, client, cfg.Consul.LeaderKey(), cfg.Service.Name); err != nil {
					return err
				}
			}
			out := c.OutOrStdout()
			if asJSON {
				enc := json.NewEncoder(out)
				enc.SetIndent("", "  ")
				enc.Encode(struct {
					Cluster consul.Status `json:"cluster"`
					Local   *agent.State  `json:"local,omitempty"`
				}{st, local})
			} else {
				printStatus(out, st, local)
			}
			if st.Holder == "" {
				return errNoPrimary
			}
			return nil
		},
	}
	configFlag(c, &path)
	c.Flags().StringVar(&socket, "socket", config.DefaultControlSocket, "the agent's control socket")
	c.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return c
}

// getJSON GETs url with hc and decodes a 200 answer into v.
func getJSON(hc *http.Client, url string, v any) error {
	resp, err := hc.Get(url)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(resp.Body)
		return fmt.Errorf("%s: %s", resp.Status, strings.TrimSpace(string(b)))
	}
	return json.NewDecoder(resp.Body).Decode(v)
}

func printStatus(w io.Writer, st consul.Status, local *agent.State) {
	if st.Holder == "" {
		fmt.Fprintf(w, "primary: none (key %s", st.Key)
		if st.Released {
			fmt.Fprint(w, ", released cleanly")
		}
		fmt.Fprintln(w, ")")
	} else {
		fmt.Fprintf(w, "primary: %s  epoch %d  since %s (%s ago)  session healthy: %v\n", st.Holder, st.Epoch,
			st.Since.Format(time.RFC3339), time.Since(st.Since).Round(time.Second), st.SessionHealthy)
	}
	tw := tabwriter.NewWriter(w, 2, 0, 2, ' ', 0)
	// FEED: the node's receiver counters as its heartbeat check last
	// carried them to the servers (Consul syncs a check's output at most
	// every check_update_interval, 5 min by default).
	fmt.Fprintln(tw, "NODE\tROLE\tPRIMARY TAG\tELIGIBLE\tCHECKS\tFEED (as last synced)")
	for _, n := range st.Nodes {
		var checks []string
		for name, s := range n.Checks {
			checks = append(checks, name+"="+s)
		}
		sort.Strings(checks)
		eligible := "yes"
		if !n.Eligible {
			eligible = "no: " + n.Ineligible
		}
		fmt.Fprintf(tw, "%s\t%s\t%v\t%s\t%s\t%s\n", n.Node, n.Role, n.Primary, eligible, strings.Join(checks, ", "), cmp.Or(n.Feed, "-"))
	}
	tw.Flush()
	if st.EligibleStandbys == 0 {
		fmt.Fprintln(w, "WARNING: no eligible standby: if the primary's host fails, nobody takes over")
	} else {
		fmt.Fprintf(w, "eligible standbys: %d\n", st.EligibleStandbys)
	}
	if local != nil {
		fmt.Fprintf(w, "this node (%s): role %s, epoch %d, forwarding %v, VIPs %v\n", local.Node, local.Role, local.Epoch, local.Forwarding, local.VIPs)
		if !local.Eligible && local.Role != "primary" {
			fmt.Fprintf(w, "  not eligible to take over: %s\n", local.Ineligible)
		}
		for _, r := range local.Relay {
			fmt.Fprintf(w, "  relay %s: received %d forwarded %d dropped %v\n", r.Listen, r.Received, r.Forwarded, r.Dropped)
		}
		if r := local.Receiver; r != nil {
			fmt.Fprintf(w, "  receiver: delivered %d repaired %d unrecovered %d missing now %d duplicates %d stale %d\n",
				r.Delivered, r.Repaired, r.Unrecovered, r.Missing, r.Duplicates, r.StaleEpoch)
			if q := r.Delivery; q != nil {
				fmt.Fprintf(w, "  delivery queue: %d waiting (at most %d), written %d, dropped %v\n", q.Depth, q.MaxDepth, q.Written, q.Dropped)
			}
		}
		for _, e := range local.Egress {
			fmt.Fprintf(w, "  egress %s: received %d, held %d, %s\n", e.Listen, e.Received, e.Held, formatCounts(nonZeroCounts(e.Results)))
		}
	}
}

// nonZeroCounts drops the zero counts, for a line a person reads.
func nonZeroCounts(m map[string]uint64) map[string]uint64 {
	out := map[string]uint64{}
	for k, v := range m {
		if v != 0 {
			out[k] = v
		}
	}
	return out
}

func newCleanupCmd() *cobra.Command {
	var path string
	c := &cobra.Command{
		Use:   "cleanup [--config FILE]",
		Short: "Remove this node's VIPs from its interfaces (after a crash; systemd's ExecStopPost)",
		Args:  cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			cfg, err := loadConfig(c, path)
			if err != nil {
				return err
			}
			unlock, err := agent.LockInstance(cfg.Node)
			if err != nil {
				return fmt.Errorf("refusing to clean up: %w", err)
			}
			defer unlock()
			client, err := consul.NewClient(cfg.Consul.ClientConfig)
			if err != nil {
				return err
			}
			res, err := agent.Cleanup(context.Background(), cfg, client)
			for _, v := range res.Removed {
				fmt.Fprintf(c.OutOrStdout(), "removed %s\n", v)
			}
			if res.Released {
				fmt.Fprintf(c.OutOrStdout(), "released %s (clean: %v)\n", cfg.Consul.LeaderKey(), res.Clean)
			}
			if res.ReleaseErr != nil {
				// Only an optimisation: without it the heartbeat check
				// fences the dead agent. Removing the VIP is what
				// matters, so this does not fail the clean-up (and the
				// unit's ExecStopPost).
				fmt.Fprintf(c.ErrOrStderr(), "driftgate: warning: releasing the leader lock: %v\n", res.ReleaseErr)
			}
			return err
		},
	}
	configFlag(c, &path)
	return c
}

func newReloadCmd() *cobra.Command {
	var path, socket string
	c := &cobra.Command{
		Use:   "reload [--config FILE | --socket PATH]",
		Short: "Have the running agent read its configuration file again and apply it",
		Long: `reload checks the configuration file, then asks the agent over its control
socket to read it again and apply what can change without a step-down: log
level, hooks, the checks' definitions, relay.allow, relay.unicast,
receive.sources, the VIPs' announce settings (from the next term) and
metrics.address. It prints what was applied and what needs a restart. An
invalid file changes nothing and exits 78, naming the key (the unit's
ExecReload, so systemctl reload fails with the reason in the journal).`,
		Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			// The file is checked here first (controlSocket reads it for
			// --config), so the error names the key even when the agent is
			// not running.
			if !c.Flags().Changed("socket") && !c.Flags().Changed("config") {
				if _, err := loadConfig(c, path); err != nil {
					return err
				}
			}
			sock, err := controlSocket(c, socket, path)
			if err != nil {
				return err
			}
			body, err := postControl(sock, "reload", 20*time.Second)
			if err != nil {
				return err
			}
			var rep agent.ReloadReport
			if err := json.Unmarshal(body, &rep); err != nil {
				return fmt.Errorf("agent on %s: %w", sock, err)
			}
			fmt.Fprintln(c.OutOrStdout(), rep.String())
			return nil
		},
	}
	configFlag(c, &path)
	c.Flags().StringVar(&socket, "socket", config.DefaultControlSocket, "the agent's control socket")
	return c
}
