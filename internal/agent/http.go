package agent

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"driftgate/consul"
	"driftgate/gateway"
)

// Handler serves the read-only listener (metrics.address): /metrics
// (Prometheus), /healthz and /status (JSON). It takes no action: an
// address Prometheus can scrape must not let anyone who reaches it move
// the VIP, so POST /step-down is refused here, pointing to the control
// socket (ControlHandler).
func (a *Agent) Handler(reg *prometheus.Registry) http.Handler {
	reg.MustRegister(a.collector())
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	a.readOnly(mux)
	mux.HandleFunc("POST /step-down", func(w http.ResponseWriter, _ *http.Request) {
		where := "the control socket (control.socket), which is off"
		if s := a.cfg.Control.Socket; s != "" {
			where = "the control socket " + s
		}
		http.Error(w, "refused: this listener is read-only; step-down is on "+where+" (driftgate step-down)", http.StatusForbidden)
	})
	return mux
}

// ControlHandler serves the control socket (control.socket, mode 0660,
// group driftgate): /healthz, /status, /cluster (the election as Consul
// shows it, so the CLI needs neither the configuration nor a token), POST
// /step-down and POST /reload, which calls reload (the process reads the
// file again and applies it: Apply) and answers with its report, or 422
// and the reason when nothing was applied.
func (a *Agent) ControlHandler(reload func(context.Context) (ReloadReport, error)) http.Handler {
	mux := http.NewServeMux()
	a.readOnly(mux)
	mux.HandleFunc("POST /reload", func(w http.ResponseWriter, r *http.Request) {
		ctx, cancel := context.WithTimeout(r.Context(), 15*time.Second)
		defer cancel()
		rep, err := reload(ctx)
		if err != nil {
			http.Error(w, err.Error(), http.StatusUnprocessableEntity)
			return
		}
		writeJSON(w, rep)
	})
	mux.HandleFunc("GET /cluster", func(w http.ResponseWriter, r *http.Request) {
		ctx, cancel := context.WithTimeout(r.Context(), 5*time.Second)
		defer cancel()
		st, err := consul.ReadStatus(ctx, a.client, a.cfg.Consul.LeaderKey(), a.cfg.Service.Name)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadGateway)
			return
		}
		writeJSON(w, st)
	})
	mux.HandleFunc("POST /step-down", func(w http.ResponseWriter, r *http.Request) {
		ctx, cancel := context.WithTimeout(r.Context(), 10*time.Second)
		defer cancel()
		err := a.StepDown(ctx)
		switch {
		case errors.Is(err, ErrNotPrimary), errors.Is(err, consul.ErrNotHolding): // not primary (any more)
			http.Error(w, err.Error(), http.StatusConflict)
		case err != nil:
			http.Error(w, err.Error(), http.StatusInternalServerError)
		default:
			w.Write([]byte("stepped down\n"))
		}
	})
	return mux
}

// readOnly adds /healthz and /status to mux.
func (a *Agent) readOnly(mux *http.ServeMux) {
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		if !a.Healthy() {
			http.Error(w, "not running", http.StatusServiceUnavailable)
			return
		}
		w.Write([]byte("ok\n"))
	})
	mux.HandleFunc("GET /status", func(w http.ResponseWriter, _ *http.Request) { writeJSON(w, a.State()) })
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.Encode(v)
}

// agentCollector reads the agent's state at scrape time, so nothing on the
// data path is instrumented twice.
type agentCollector struct {
	a                                           *Agent
	role, epoch, sinceConfirm, transitions      *prometheus.Desc
	reasons, illegal, conflicts, announcements  *prometheus.Desc
	eligible                                    *prometheus.Desc
	vipPresent, relayReceived, relayPackets     *prometheus.Desc
	relayBytes, relaySendErrors, recvReceived   *prometheus.Desc
	recvLocal, recvEpoch, lease                 *prometheus.Desc
	recvFrames, recvReordered, hooks            *prometheus.Desc
	recvUnrecovered, recvMissing, recvRepaired  *prometheus.Desc
	recvNacks, recvRepairLatency                *prometheus.Desc
	recvRegressions                             *prometheus.Desc
	queueDepth, queueWritten, queueDropped      *prometheus.Desc
	repairRequests, repairFrames, repairRefuse  *prometheus.Desc
	repairUnavailable                           *prometheus.Desc
	egressReceived, egressDatagrams, egressHeld *prometheus.Desc
	relayRecords                                *prometheus.Desc
	takeover                                    prometheus.Histogram
}

func (a *Agent) collector() prometheus.Collector {
	d := func(name, help string, labels ...string) *prometheus.Desc {
		return prometheus.NewDesc("driftgate_"+name, help, labels, nil)
	}
	c := &agentCollector{a: a,
		role:          d("role", "1 for this node's current role.", "role"),
		epoch:         d("epoch", "Epoch (fencing token) of the current term; 0 when none."),
		sinceConfirm:  d("lock_confirm_age_seconds", "Seconds since the last successful lock confirmation was sent (holder only)."),
		transitions:   d("role_transitions_total", "Role changes.", "from", "to"),
		reasons:       d("role_transition_reasons_total", "Role changes by reason.", "reason"),
		conflicts:     d("vip_conflicts_total", "Other hosts seen claiming the VIP."),
		announcements: d("vip_announcements_total", "Gratuitous ARP / neighbour advertisements sent."),
		vipPresent:    d("vip_present", "1 if the VIP is on this host.", "vip"),
		illegal:       d("role_illegal_transitions_total", "Role changes the role loop must never make (a bug)."),
		eligible:      d("eligible", "1 if this node takes over should the primary fail (contending with a live session); alert when no standby is."),
		// Totals and outcomes are separate metrics, so that the outcomes
		// of one total add up to it: sum(relay_packets_total) ==
		// relay_received_total, sum(receiver_frames_total) ==
		// receiver_received_total.
		relayReceived:     d("relay_received_total", "Datagrams the relay read.", "listen"),
		relayPackets:      d("relay_packets_total", "What became of each datagram the relay read.", "listen", "result"),
		relayBytes:        d("relay_bytes_total", "Relay payload bytes received.", "listen"),
		relaySendErrors:   d("relay_send_errors_total", "Frames a destination refused, counted per destination.", "listen"),
		recvReceived:      d("receiver_received_total", "Datagrams the receiver read."),
		recvEpoch:         d("receiver_epoch", "The newest epoch the receiver accepted frames of: a receiver behind the others is on a deposed primary."),
		lease:             d("lease_seconds", "The holder's lease (election.t_fence): lock_confirm_age_seconds reaching it ends the term."),
		recvLocal:         d("receiver_local_total", "Frames the receiver took from this node's relay in process (as primary), not from a socket."),
		recvFrames:        d("receiver_frames_total", "What became of each datagram the receiver read.", "result"),
		recvReordered:     d("receiver_reordered_total", "Frames delivered after a later one, before they were asked for."),
		recvUnrecovered:   d("receiver_unrecovered_total", "Sequence numbers given up: not received, nor repaired by the deadline."),
		recvMissing:       d("receiver_missing", "Sequence numbers skipped and not (yet) received: the open gaps."),
		recvRepaired:      d("receiver_repaired_total", "Frames that arrived after a repair request."),
		recvNacks:         d("receiver_nacks_total", "Repair requests, by result.", "result"),
		recvRepairLatency: d("receiver_repair_latency_seconds", "From a gap's detection to the repaired frame's arrival."),
		recvRegressions:   d("receiver_epoch_regressions_total", "Times Consul confirmed an epoch lower than the one followed (its cluster rebuilt); alert on any."),
		queueDepth:        d("delivery_queue_depth", "Datagrams waiting for the application."),
		queueWritten:      d("delivery_written_total", "Datagrams the application's socket took."),
		queueDropped:      d("delivery_dropped_total", "Datagrams not handed to the application, by reason.", "reason"),
		repairRequests:    d("relay_repair_requests_total", "Repair requests the relay read."),
		repairFrames:      d("relay_repair_frames_total", "Frames resent in answer to repair requests.", "to"),
		repairRefuse:      d("relay_repair_refused_total", "Repair requests (rate_limited: frames) not answered, by reason.", "reason"),
		repairUnavailable: d("relay_repair_unavailable_total", "Frames asked for that the ring no longer held."),
		hooks:             d("hooks_total", "Hook runs by result.", "result"),
		egressReceived:    d("egress_received_total", "Datagrams the applications handed to an egress port.", "listen"),
		egressDatagrams:   d("egress_datagrams_total", "What became of each datagram an egress port read (with egress_held, they add up to egress_received_total).", "listen", "result"),
		egressHeld:        d("egress_held", "Datagrams a standby holds until the primary says it sent them (egress.duplicate_window).", "listen"),
		relayRecords:      d("relay_records_total", "Records (the egress's ids sent) the relay put in the feed."),
		takeover:          a.takeover,
	}
	return c
}

func (c *agentCollector) Describe(ch chan<- *prometheus.Desc) {
	prometheus.DescribeByCollect(c, ch)
}

func (c *agentCollector) Collect(ch chan<- prometheus.Metric) {
	st := c.a.State()
	g := func(desc *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(desc, prometheus.GaugeValue, v, labels...)
	}
	ct := func(desc *prometheus.Desc, v uint64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(desc, prometheus.CounterValue, float64(v), labels...)
	}
	for _, r := range Roles() {
		v := 0.0
		if r.String() == st.Role {
			v = 1
		}
		g(c.role, v, r.String())
	}
	g(c.epoch, float64(st.Epoch))
	g(c.lease, c.a.cfg.Election.Timing.TFence.Seconds())
	g(c.eligible, map[bool]float64{true: 1}[st.Eligible])
	if !st.LastConfirm.IsZero() {
		g(c.sinceConfirm, time.Since(st.LastConfirm).Seconds())
	}
	for k, v := range st.Transitions {
		from, to, _ := strings.Cut(k, ">")
		ct(c.transitions, v, from, to)
	}
	for k, v := range st.Reasons {
		ct(c.reasons, v, k)
	}
	ct(c.illegal, st.Illegal)
	ct(c.conflicts, st.Conflicts)
	ct(c.announcements, c.a.announcementsSent())
	for vip, ok := range st.VIPs {
		v := 0.0
		if ok {
			v = 1
		}
		g(c.vipPresent, v, vip)
	}
	for _, rs := range st.Relay {
		l := rs.Listen.String()
		ct(c.relayReceived, rs.Received, l)
		ct(c.relayPackets, rs.Forwarded, l, "forwarded")
		for reason, v := range rs.Dropped {
			ct(c.relayPackets, v, l, reason)
		}
		ct(c.relayBytes, rs.Bytes, l)
		ct(c.relaySendErrors, rs.SendErrors, l)
	}
	if r := st.Receiver; r != nil {
		ct(c.recvReceived, r.Received)
		ct(c.recvLocal, r.Local)
		g(c.recvEpoch, float64(r.Epoch))
		for name, v := range receiverOutcomes(*r) {
			ct(c.recvFrames, v, name)
		}
		ct(c.recvReordered, r.Reordered)
		ct(c.recvUnrecovered, r.Unrecovered)
		g(c.recvMissing, float64(r.Missing))
		ct(c.recvRepaired, r.Repaired)
		ct(c.recvRegressions, r.EpochRegressions)
		ct(c.recvNacks, r.Nacks, "sent")
		ct(c.recvNacks, r.NackErrors, "send_error")
		ch <- latencyHistogram(c.recvRepairLatency, r.RepairLatency)
		if q := r.Delivery; q != nil {
			g(c.queueDepth, float64(q.Depth))
			ct(c.queueWritten, q.Written)
			for reason, v := range q.Dropped {
				ct(c.queueDropped, v, reason)
			}
		}
	}
	if rp := st.Repair; rp != nil {
		ct(c.repairRequests, rp.Requests)
		ct(c.repairFrames, rp.Frames-rp.Multicast, "unicast")
		ct(c.repairFrames, rp.Multicast, "multicast")
		for reason, v := range rp.Refused {
			ct(c.repairRefuse, v, reason)
		}
		ct(c.repairUnavailable, rp.Unavailable)
	}
	for k, v := range st.Hooks {
		ct(c.hooks, v, k)
	}
	for _, es := range st.Egress {
		ct(c.egressReceived, es.Received, es.Listen)
		for r, v := range es.Results {
			ct(c.egressDatagrams, v, es.Listen, r)
		}
		g(c.egressHeld, float64(es.Held), es.Listen)
	}
	if c.a.relay != nil {
		ct(c.relayRecords, c.a.relay.Records())
	}
	c.takeover.Collect(ch)
}

// latencyHistogram turns the receiver's repair latency buckets into a
// Prometheus histogram (cumulative counts, seconds).
func latencyHistogram(desc *prometheus.Desc, h gateway.RepairLatency) prometheus.Metric {
	buckets := map[float64]uint64{}
	var cum uint64
	for i, b := range h.Bounds {
		cum += h.Counts[i]
		buckets[b.Seconds()] = cum
	}
	cum += h.Counts[len(h.Bounds)]
	return prometheus.MustNewConstHistogram(desc, cum, h.Sum.Seconds(), buckets)
}

// receiverOutcomes is what became of each datagram the receiver read, by
// result label; the values add up to Received, less the frames waiting for
// their epoch's confirmation (HeldUnconfirmed).
func receiverOutcomes(r gateway.ReceiverStats) map[string]uint64 {
	m := map[string]uint64{"delivered": r.Delivered, "duplicate": r.Duplicates, "stale_epoch": r.StaleEpoch,
		"late": r.Late, "truncated": r.Truncated, "deliver_error": r.DeliverErrors,
		"unconfirmed_epoch": r.Unconfirmed, "foreign_source": r.ForeignSource, "epoch_step": r.EpochStep,
		"source_rate_limited": r.SourceRateLimited, "replayed": r.Replayed,
		"announcement": r.Announcements, "bad_announcement": r.BadAnnouncements, "record": r.Records}
	if r.PeerRepair != nil {
		m["repair_request"] = r.PeerRepair.Requests
	}
	for reason, v := range r.Rejected {
		m["rejected_"+reason] = v
	}
	return m
}
