package main

import (
	"fmt"
	"io"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/spf13/cobra"
	"golang.org/x/sync/errgroup"

	"driftgate/consul"
	"driftgate/gateway"
)

func newReceiveCmd(g *globals) *cobra.Command {
	var (
		group, iface, listen, deliver, keyFile string
		rcvbuf, queueFrames, queueBytes        int
		noRepair                               bool
		order, consulAddr, leaderKey           string
		orderHold                              time.Duration
		maxEpochStep                           uint64
	)
	c := &cobra.Command{
		Use:   "receive (--group GROUP:PORT [--iface NAME] | --listen ADDR:PORT) --deliver URL [--consul ADDR]",
		Short: "Receive relayed frames and deliver their payloads to the local application",
		Long: `receive joins the multicast group (or listens for unicast frames), checks each
frame, drops duplicates and frames from deposed primaries (older epochs), counts
gaps, and delivers the rest:

  udp://HOST:PORT   the original payload as one datagram
  unix:///PATH      the whole frame to a unix datagram socket (sender kept)
  stdout            one JSON line per frame

On SIGINT or SIGTERM it prints a summary of its counters to stderr and exits 0.`,
		Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			cfg := gateway.ReceiverConfig{Iface: iface, RcvBuf: rcvbuf, Repair: gateway.ReceiverRepair{Off: noRepair}, OrderHold: orderHold,
				ConfirmEpochs: consulAddr != "", MaxEpochStep: maxEpochStep}
			var err error
			if cfg.Order, err = gateway.ParseOrder(order); err != nil {
				return usagef("--order: %v", err)
			}
			switch {
			case (group == "") == (listen == ""):
				return usagef("set exactly one of --group and --listen")
			case group != "":
				if cfg.Group, err = parseAddrPort("group", group); err != nil {
					return err
				}
			default:
				if cfg.Listen, err = parseAddrPort("listen", listen); err != nil {
					return err
				}
			}
			if deliver == "" {
				return usagef("--deliver is required (udp://HOST:PORT, unix:///PATH or stdout)")
			}
			if cfg.Key, cfg.NextKey, err = loadKeys(keyFile); err != nil {
				return err
			}
			log, err := g.logger(c.ErrOrStderr())
			if err != nil {
				return err
			}
			d, err := gateway.ParseDeliverURL(deliver)
			if err != nil {
				return usagef("--deliver: %v", err)
			}
			if cfg.Deliver, err = d.Open(gateway.OpenOptions{Stdout: c.OutOrStdout(), Log: log,
				Queue: gateway.QueueConfig{Frames: queueFrames, Bytes: queueBytes}}); err != nil {
				return usagef("--deliver: %v", err)
			}
			var client *api.Client
			if consulAddr != "" {
				if client, err = consul.NewClient(consul.ClientConfig{Address: consulAddr}); err != nil {
					return usagef("--consul: %v", err)
				}
			}
			if cfg.Key == nil {
				// Without a key anyone on the LAN can send frames that
				// look like the feed (docs/frame.md, "What the agent's
				// receiver accepts"); the standalone receiver has no
				// Consul to check epochs against either.
				log.Warn("receiving without a key: any host that can reach the group or the port can inject frames; give --key-file (driftgate key generate)")
			}
			r, err := gateway.NewReceiver(cfg, log)
			if err != nil {
				cfg.Deliver.Close()
				return usageError{err}
			}
			ctx, stop := signalContext()
			defer stop()
			if err := r.Bind(ctx); err != nil {
				cfg.Deliver.Close()
				return err
			}
			sdNotifier{}.Notify("READY=1") // for Type=notify units; a no-op elsewhere
			g, gctx := errgroup.WithContext(ctx)
			g.Go(func() error { return r.Run(gctx) })
			if client != nil {
				// Like the agent's: an epoch is taken once Consul shows it
				// as a term of the leader key.
				g.Go(func() error {
					return consul.WatchEpochs(gctx, client, leaderKey, 5*time.Second, log, r.StaleEpochs(), r.ConfirmEpoch)
				})
			}
			if err := g.Wait(); err != nil {
				return err
			}
			printReceiverSummary(c.ErrOrStderr(), r.Stats())
			return nil
		},
	}
	f := c.Flags()
	f.StringVar(&group, "group", "", "multicast group to join, e.g. 239.255.0.1:5001")
	f.StringVar(&iface, "iface", "", "interface to join the group on")
	f.StringVar(&listen, "listen", "", "receive unicast frames on this address instead")
	f.StringVar(&deliver, "deliver", "", "where to deliver payloads: udp://HOST:PORT, unix:///PATH or stdout")
	f.StringVar(&keyFile, "key-file", "", "file with the HMAC key as hex (mode 0600); frames must then carry a valid tag")
	f.IntVar(&rcvbuf, "rcvbuf", gateway.DefaultRcvBuf, "receive buffer bytes to request")
	f.StringVar(&order, "order", "arrival", "arrival, or sequence: frames after a hole wait for it (at most --order-hold)")
	f.DurationVar(&orderHold, "order-hold", gateway.DefaultOrderHold, "in sequence order, how long frames wait behind a hole")
	f.StringVar(&consulAddr, "consul", "", "follow a Consul leader key like the agent: take an epoch only once Consul shows it (host:port of an agent)")
	f.StringVar(&leaderKey, "leader-key", "driftgate/leader", "with --consul: the leader key (consul.key_prefix + /leader)")
	f.Uint64Var(&maxEpochStep, "max-epoch-step", 0, "refuse a frame whose epoch is more than N above the one followed (0: no limit); for receivers without --consul")
	f.BoolVar(&noRepair, "no-repair", false, "count gaps only; ask the relay for no missing frame")
	f.IntVar(&queueFrames, "queue-frames", gateway.DefaultQueueFrames, "delivery queue bound in datagrams, for a slow application")
	f.IntVar(&queueBytes, "queue-bytes", gateway.DefaultQueueBytes, "delivery queue bound in bytes")
	return c
}

func printReceiverSummary(w io.Writer, s gateway.ReceiverStats) {
	fmt.Fprintf(w, "receive: received=%d local=%d delivered=%d duplicates=%d stale_epoch=%d late=%d gaps=%d repaired=%d unrecovered=%d missing=%d reordered=%d nacks=%d truncated=%d deliver_errors=%d unconfirmed_epoch=%d epoch_step=%d epoch=%d rejected{%s}\n",
		s.Received, s.Local, s.Delivered, s.Duplicates, s.StaleEpoch, s.Late, s.Gaps, s.Repaired, s.Unrecovered, s.Missing, s.Reordered, s.Nacks, s.Truncated, s.DeliverErrors, s.Unconfirmed, s.EpochStep, s.Epoch, formatCounts(s.Rejected))
	if s.Repaired > 0 {
		// Bucket bounds: "p50 ≤ 2ms".
		fmt.Fprintf(w, "receive: repair latency p50<=%s p99<=%s\n", s.RepairLatency.Quantile(0.5), s.RepairLatency.Quantile(0.99))
	}
}
