package gateway

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
)

// Handler serves /metrics (Prometheus), /healthz, /status (JSON) and
// POST /step-down. It listens on loopback by default (metrics.address):
// step-down is an operator's action.
func (a *Agent) Handler(reg *prometheus.Registry) http.Handler {
	reg.MustRegister(a.collector())
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		if !a.Healthy() {
			http.Error(w, "not running", http.StatusServiceUnavailable)
			return
		}
		w.Write([]byte("ok\n"))
	})
	mux.HandleFunc("GET /status", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		enc.Encode(a.State())
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

// agentCollector reads the agent's state at scrape time, so nothing on the
// data path is instrumented twice.
type agentCollector struct {
	a                                             *Agent
	role, epoch, sinceConfirm, transitions        *prometheus.Desc
	reasons, conflicts, announcements, vipPresent *prometheus.Desc
	relayPackets, relayBytes, recvFrames, hooks   *prometheus.Desc
	takeover                                      prometheus.Histogram
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
		relayPackets:  d("relay_packets_total", "Relay datagrams by result.", "listen", "result"),
		relayBytes:    d("relay_bytes_total", "Relay payload bytes received.", "listen"),
		recvFrames:    d("receiver_frames_total", "Receiver frames by result.", "result"),
		hooks:         d("hooks_total", "Hook runs by result.", "result"),
		takeover:      a.takeover,
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
		ct(c.relayPackets, rs.Received, l, "received")
		ct(c.relayPackets, rs.Forwarded, l, "forwarded")
		for reason, v := range rs.Dropped {
			ct(c.relayPackets, v, l, reason)
		}
		ct(c.relayBytes, rs.Bytes, l)
	}
	if r := st.Receiver; r != nil {
		for name, v := range map[string]uint64{"received": r.Received, "delivered": r.Delivered, "duplicate": r.Duplicates,
			"stale_epoch": r.StaleEpoch, "late": r.Late, "lost": r.Lost, "reordered": r.Reordered, "truncated": r.Truncated, "deliver_error": r.DeliverErrors} {
			ct(c.recvFrames, v, name)
		}
		for reason, v := range r.Rejected {
			ct(c.recvFrames, v, "rejected_"+reason)
		}
	}
	for k, v := range st.Hooks {
		ct(c.hooks, v, k)
	}
	c.takeover.Collect(ch)
}
