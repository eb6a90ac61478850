package main

import (
	"fmt"
	"io"

	"github.com/spf13/cobra"

	"driftgate/gateway"
)

func newSendCmd() *cobra.Command {
	var (
		egress string
		id     uint64
		raw    bool
	)
	c := &cobra.Command{
		Use:   "send --egress ADDR [--id N] DEST PAYLOAD",
		Short: "Hand one datagram to an egress port (the primary sends it from the VIP)",
		Long: `send hands PAYLOAD to the egress port at ADDR (a loopback IP:PORT or
unix:///PATH) with the egress header of docs/frame.md naming DEST (IP:PORT, or
- for the port's own destination) and, with --id, a message id. With --raw the
payload goes alone, for a port without header: true (DEST must be -). On the
primary the agent sends it from the VIP; on a standby it is dropped (counted
as not_primary), or held until the primary says it sent the id.`,
		Args: func(_ *cobra.Command, args []string) error {
			if len(args) != 2 {
				return usagef("want DEST and PAYLOAD, got %d argument(s)", len(args))
			}
			return nil
		},
		RunE: func(c *cobra.Command, args []string) error {
			if egress == "" {
				return usagef("--egress is required: the egress port, e.g. 127.0.0.1:7100")
			}
			to, err := gateway.ParseEgressAddr(egress)
			if err != nil {
				return usagef("--egress: %v", err)
			}
			var h gateway.EgressHeader
			if args[0] != "-" {
				if h.Dest, err = parseAddrPort("DEST", args[0]); err != nil {
					return err
				}
			}
			h.ID, h.HasID = id, c.Flags().Changed("id")
			var b []byte
			if raw {
				if h.Dest.IsValid() || h.HasID {
					return usagef("--raw: the payload goes alone: DEST must be - and there is no --id")
				}
			} else {
				b = gateway.AppendEgressHeader(b, h)
			}
			b = append(b, args[1]...)
			conn, err := to.Dial()
			if err != nil {
				return fmt.Errorf("sending to the egress port %s: %w", to, err)
			}
			defer conn.Close()
			if _, err := conn.Write(b); err != nil {
				return fmt.Errorf("sending to the egress port %s: %w", to, err)
			}
			return nil
		},
	}
	f := c.Flags()
	f.StringVar(&egress, "egress", "", "the egress port: 127.0.0.1:7100 or unix:///run/driftgate/egress.sock")
	f.Uint64Var(&id, "id", 0, "message id, for duplicate suppression across a failover (egress.duplicate_window)")
	f.BoolVar(&raw, "raw", false, "send the payload without an egress header (a port with a fixed destination)")
	return c
}

func newEgressCmd(g *globals) *cobra.Command {
	var (
		listen, dest, source string
		allow                []string
		header, noGSO        bool
		rate, batch          int
	)
	c := &cobra.Command{
		Use:   "egress --listen ADDR --source IP:PORT --allow CIDR [--to DEST | --header]",
		Short: "Run a standalone egress port (no election: it always sends)",
		Long: `egress takes the datagrams local applications send to ADDR (a loopback
IP:PORT or unix:///PATH) and sends each, from --source, to --to, or with
--header to the destination its egress header names (docs/frame.md).
Destinations outside --allow are refused. It always sends, as a primary
does; the agent's egress section does the same on the primary only.
On SIGINT or SIGTERM it prints its counters to stderr and exits 0.`,
		Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			l := gateway.EgressListener{Header: header}
			var err error
			if l.Listen, err = gateway.ParseEgressAddr(listen); err != nil {
				return usagef("--listen: %v", err)
			}
			if dest != "" {
				if l.Destination, err = parseAddrPort("to", dest); err != nil {
					return err
				}
			}
			cfg := gateway.EgressConfig{Listeners: []gateway.EgressListener{l}, Rate: rate, Batch: batch, NoGSO: noGSO}
			if cfg.Source, err = parseAddrPort("source", source); err != nil {
				return err
			}
			if cfg.Allow, err = parseAllow("allow", allow); err != nil {
				return err
			}
			log, err := g.logger(c.ErrOrStderr())
			if err != nil {
				return err
			}
			e, err := gateway.NewEgress(cfg, log)
			if err != nil {
				return usageError{err}
			}
			ctx, stop := signalContext()
			defer stop()
			if err := e.Bind(ctx); err != nil {
				return err
			}
			e.SetForwarding(true)
			sdNotifier{}.Notify("READY=1")
			if err := e.Run(ctx); err != nil {
				return err
			}
			printEgressSummary(c.ErrOrStderr(), e.Stats())
			return nil
		},
	}
	f := c.Flags()
	f.StringVar(&listen, "listen", "", "where applications send: 127.0.0.1:7100 or unix:///PATH")
	f.StringVar(&source, "source", "", "the address and port datagrams leave from, e.g. the VIP: 198.18.0.100:6000")
	f.StringVar(&dest, "to", "", "where every datagram goes (without --header; with it, those whose header names none)")
	f.BoolVar(&header, "header", false, "each datagram begins with an egress header naming its destination")
	f.StringArrayVar(&allow, "allow", nil, "destinations allowed (CIDR, repeatable; at least one)")
	f.IntVar(&rate, "rate", 0, "datagrams a second to one destination address (0: no limit)")
	f.IntVar(&batch, "batch", gateway.DefaultBatch, "datagrams per recvmmsg/sendmmsg call")
	f.BoolVar(&noGSO, "no-gso", false, "do not use UDP segmentation offload for runs of equal-size datagrams")
	return c
}

func printEgressSummary(w io.Writer, stats []gateway.EgressStats) {
	for _, s := range stats {
		fmt.Fprintf(w, "egress %s: received=%d %s\n", s.Listen, s.Received, formatCounts(s.Results))
	}
}
