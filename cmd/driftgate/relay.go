package main

import (
	"fmt"
	"io"
	"log/slog"
	"sort"
	"strings"

	"github.com/spf13/cobra"
	"golang.org/x/sync/errgroup"

	"driftgate/gateway"
)

func newRelayCmd(g *globals) *cobra.Command {
	var (
		listen, unicast, allow, repairAllow []string
		group, iface, keyFile, deliver      string
		ttl, rcvbuf, batch                  int
		epoch                               uint64
		noGSO, noGRO, noRepair, mcastLoop   bool
	)
	c := &cobra.Command{
		Use:   "relay --listen ADDR:PORT [--listen ...] (--group GROUP:PORT | --unicast ADDR:PORT ...)",
		Short: "Run a standalone tee relay (no election)",
		Long: `relay receives UDP datagrams on the listen addresses, wraps each in a
driftgate frame (docs/frame.md) and sends it to the multicast group and to every
unicast receiver. Listen addresses may be absent from the host (IP_FREEBIND).
With --deliver the host's own receiver runs in the same process, as the
agent's does on the primary: it takes every frame from the relay by a call
(same checks as receive), joins the group for other relays' frames, and
delivers to the application.
On SIGINT or SIGTERM it prints a summary of its counters to stderr and exits 0.`,
		Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			cfg := gateway.RelayConfig{TTL: ttl, Iface: iface, Epoch: epoch, RcvBuf: rcvbuf, Batch: batch, NoGSO: noGSO, NoGRO: noGRO,
				Repair: gateway.RepairConfig{Off: noRepair}, MulticastLoop: mcastLoop}
			var err error
			if cfg.Listen, err = parseAddrPorts("listen", listen); err != nil {
				return err
			}
			if len(cfg.Listen) == 0 {
				return usagef("--listen is required")
			}
			if group != "" {
				if cfg.Group, err = parseAddrPort("group", group); err != nil {
					return err
				}
			}
			if cfg.Unicast, err = parseAddrPorts("unicast", unicast); err != nil {
				return err
			}
			if cfg.Allow, err = parseAllow("allow", allow); err != nil {
				return err
			}
			if cfg.Repair.Allow, err = parseAllow("repair-allow", repairAllow); err != nil {
				return err
			}
			if cfg.Key, cfg.NextKey, err = loadKeys(keyFile); err != nil {
				return err
			}
			log, err := g.logger(c.ErrOrStderr())
			if err != nil {
				return err
			}
			r, err := gateway.NewRelay(cfg, log)
			if err != nil {
				return usageError{err}
			}
			var local *gateway.Receiver
			if deliver != "" {
				if local, err = localReceiver(cfg, deliver, noRepair, c.OutOrStdout(), log); err != nil {
					return err
				}
				r.SetLocal(local)
			}
			ctx, stop := signalContext()
			defer stop()
			if local != nil {
				if err := local.Bind(ctx); err != nil {
					return err
				}
			}
			if err := r.Bind(ctx); err != nil {
				return err
			}
			sdNotifier{}.Notify("READY=1")
			g, gctx := errgroup.WithContext(ctx)
			g.Go(func() error { return r.Run(gctx) })
			if local != nil {
				g.Go(func() error { return local.Run(gctx) })
			}
			if err := g.Wait(); err != nil {
				return err
			}
			printRelaySummary(c.ErrOrStderr(), r.Stats())
			if local != nil {
				printReceiverSummary(c.ErrOrStderr(), local.Stats())
			}
			if rp, ok := r.RepairStats(); ok {
				fmt.Fprintf(c.ErrOrStderr(), "repair: requests=%d frames=%d multicast=%d bytes=%d suppressed=%d unavailable=%d refused{%s}\n",
					rp.Requests, rp.Frames, rp.Multicast, rp.Bytes, rp.Suppressed, rp.Unavailable, formatCounts(rp.Refused))
			}
			return nil
		},
	}
	f := c.Flags()
	f.StringArrayVar(&listen, "listen", nil, "UDP address to receive on, e.g. 198.18.0.100:5000 (repeatable)")
	f.StringVar(&group, "group", "", "multicast group to send frames to, e.g. 239.255.0.1:5001")
	f.StringVar(&iface, "iface", "", "multicast egress interface")
	f.IntVar(&ttl, "ttl", 1, "multicast TTL / hop limit")
	f.StringArrayVar(&unicast, "unicast", nil, "unicast receiver to send frames to (repeatable)")
	f.StringArrayVar(&allow, "allow", nil, "forward only datagrams from this CIDR (repeatable; default: all)")
	f.StringVar(&keyFile, "key-file", "", "file with the HMAC key as hex (mode 0600)")
	f.Uint64Var(&epoch, "epoch", 0, "epoch to put in frames (0 = standalone)")
	f.IntVar(&rcvbuf, "rcvbuf", gateway.DefaultRcvBuf, "receive buffer bytes to request")
	f.IntVar(&batch, "batch", gateway.DefaultBatch, "datagrams per recvmmsg/sendmmsg call")
	f.StringArrayVar(&repairAllow, "repair-allow", nil, "answer repair requests from this CIDR too, besides the unicast receivers (repeatable)")
	f.BoolVar(&noRepair, "no-repair", false, "keep no ring and answer no repair requests")
	f.BoolVar(&noGSO, "no-gso", false, "do not use UDP segmentation offload for runs of equal-size frames")
	f.BoolVar(&noGRO, "no-gro", false, "read every datagram on its own, never runs the kernel coalesced (UDP_GRO)")
	f.StringVar(&deliver, "deliver", "", "run this host's receiver in process and deliver to udp://HOST:PORT, unix:///PATH or stdout (needs --group)")
	f.BoolVar(&mcastLoop, "multicast-loop", false, "with --deliver, still loop the group's copies back to this host (for other receivers on it)")
	return c
}

// localReceiver is the relay host's own receiver (--deliver): it joins the
// relay's group and takes the relay's frames in process.
func localReceiver(cfg gateway.RelayConfig, deliver string, noRepair bool, stdout io.Writer, log *slog.Logger) (*gateway.Receiver, error) {
	if !cfg.Group.IsValid() {
		return nil, usagef("--deliver: needs --group (the host's receiver joins it for other relays' frames)")
	}
	d, err := gateway.ParseDeliverURL(deliver)
	if err != nil {
		return nil, usagef("--deliver: %v", err)
	}
	dl, err := d.Open(gateway.OpenOptions{Stdout: stdout, Log: log})
	if err != nil {
		return nil, usagef("--deliver: %v", err)
	}
	rcv, err := gateway.NewReceiver(gateway.ReceiverConfig{Group: cfg.Group, Iface: cfg.Iface, Key: cfg.Key, NextKey: cfg.NextKey,
		Repair: gateway.ReceiverRepair{Off: noRepair}, Deliver: dl}, log)
	if err != nil {
		dl.Close()
		return nil, usageError{err}
	}
	return rcv, nil
}

func printRelaySummary(w io.Writer, stats []gateway.RelayStats) {
	for _, s := range stats {
		fmt.Fprintf(w, "relay %s: received=%d forwarded=%d bytes=%d dropped{%s}\n",
			s.Listen, s.Received, s.Forwarded, s.Bytes, formatCounts(s.Dropped))
	}
}

func formatCounts(m map[string]uint64) string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = fmt.Sprintf("%s=%d", k, m[k])
	}
	return strings.Join(parts, " ")
}
