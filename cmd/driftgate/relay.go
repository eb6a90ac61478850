package main

import (
	"fmt"
	"io"
	"sort"
	"strings"

	"github.com/spf13/cobra"

	"driftgate/gateway"
)

func newRelayCmd(g *globals) *cobra.Command {
	var (
		listen, unicast, allow, repairAllow []string
		group, iface, keyFile               string
		ttl, rcvbuf, batch                  int
		epoch                               uint64
		noGSO, noRepair                     bool
	)
	c := &cobra.Command{
		Use:   "relay --listen ADDR:PORT [--listen ...] (--group GROUP:PORT | --unicast ADDR:PORT ...)",
		Short: "Run a standalone tee relay (no election)",
		Long: `relay receives UDP datagrams on the listen addresses, wraps each in a
driftgate frame (docs/frame.md) and sends it to the multicast group and to every
unicast receiver. Listen addresses may be absent from the host (IP_FREEBIND).
On SIGINT or SIGTERM it prints a summary of its counters to stderr and exits 0.`,
		Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			cfg := gateway.RelayConfig{TTL: ttl, Iface: iface, Epoch: epoch, RcvBuf: rcvbuf, Batch: batch, NoGSO: noGSO,
				Repair: gateway.RepairConfig{Off: noRepair}}
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
			ctx, stop := signalContext()
			defer stop()
			if err := r.Bind(ctx); err != nil {
				return err
			}
			sdNotifier{}.Notify("READY=1")
			if err := r.Run(ctx); err != nil {
				return err
			}
			printRelaySummary(c.ErrOrStderr(), r.Stats())
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
	return c
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
