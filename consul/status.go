package consul

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/hashicorp/consul/api"
)

// NodeStatus is one node's registration as the catalog sees it.
type NodeStatus struct {
	Node      string // driftgate's node name (the service meta)
	ServiceID string
	Role      string // from the service meta
	Primary   bool   // carries the primary tag
	Checks    map[string]string
	// Feed is the feed's counters at the node, as its heartbeat last
	// carried them to the servers (SetHeartbeatNote), or "".
	Feed string
	// Eligible: not the holder, with a live election session (so its
	// checks were passing when it was made and are bound to it): it takes
	// over if the holder fails. Ineligible says why not.
	Eligible   bool
	Ineligible string
}

// Status is the cluster's election state, for `driftgate status`.
type Status struct {
	Key     string
	Holder  string // node in the key's value; "" when nobody holds it
	Session string
	Epoch   uint64    // ModifyIndex of the acquiring write
	Since   time.Time // when the holder acquired the lock
	// LastRelease describes the key when it is free (released cleanly, or not).
	Released       bool
	SessionHealthy bool // the holder's session exists
	Nodes          []NodeStatus
	// EligibleStandbys counts the nodes that would take over now; 0 with
	// a holder means a host failure would leave the service dark.
	EligibleStandbys int
}

// ReadStatus reads the leader key (consistently), the holder's session and
// every node registered for service.
func ReadStatus(ctx context.Context, c *api.Client, key, service string) (Status, error) {
	st := Status{Key: key}
	q := (&api.QueryOptions{RequireConsistent: true}).WithContext(ctx)
	pair, _, err := c.KV().Get(key, q)
	if err != nil {
		return st, fmt.Errorf("reading leader key %s: %w", key, err)
	}
	if pair != nil {
		v := parseValue(pair.Value)
		st.Released = v.Released
		if pair.Session != "" {
			st.Holder, st.Session, st.Epoch, st.Since = v.Node, pair.Session, pair.ModifyIndex, v.Since
			info, _, err := c.Session().Info(pair.Session, (&api.QueryOptions{}).WithContext(ctx))
			if err != nil {
				return st, fmt.Errorf("reading session %s: %w", pair.Session, err)
			}
			st.SessionHealthy = info != nil
		}
	}
	entries, _, err := c.Health().Service(service, "", false, (&api.QueryOptions{}).WithContext(ctx))
	if err != nil {
		return st, fmt.Errorf("reading service %s: %w", service, err)
	}
	sessions, _, err := c.Session().List((&api.QueryOptions{}).WithContext(ctx))
	if err != nil {
		return st, fmt.Errorf("listing sessions: %w", err)
	}
	for _, e := range entries {
		node := e.Service.Meta[metaNode] // driftgate's name; Consul's node name may differ
		if node == "" {
			node = e.Node.Node
		}
		ns := NodeStatus{Node: node, ServiceID: e.Service.ID, Role: e.Service.Meta[metaRole],
			Primary: slices.Contains(e.Service.Tags, PrimaryTag), Checks: map[string]string{}}
		var critical []string
		for _, ch := range e.Checks {
			ns.Checks[ch.Name] = ch.Status
			if ch.CheckID == heartbeatCheckID(e.Service.ID) {
				ns.Feed = strings.TrimPrefix(strings.TrimPrefix(ch.Output, heartbeatAlive), "; ")
			}
			if ch.Status == api.HealthCritical {
				critical = append(critical, ch.Name)
			}
		}
		live := slices.ContainsFunc(sessions, func(s *api.SessionEntry) bool {
			return s.Name == sessionName(node) && s.Node == e.Node.Node && s.ID != st.Session
		})
		holder := node == st.Holder && st.Holder != ""
		switch {
		case holder:
			ns.Ineligible = "holds the lock"
		case len(critical) > 0:
			slices.Sort(critical)
			ns.Ineligible = "critical: " + strings.Join(critical, ", ")
		case !live:
			ns.Ineligible = "no election session (starting, holding off, or its agent cannot reach Consul)"
		default:
			ns.Eligible = true
			st.EligibleStandbys++
		}
		st.Nodes = append(st.Nodes, ns)
	}
	slices.SortFunc(st.Nodes, func(a, b NodeStatus) int {
		if a.Node != b.Node {
			if a.Node < b.Node {
				return -1
			}
			return 1
		}
		if a.ServiceID < b.ServiceID {
			return -1
		}
		return 1
	})
	return st, nil
}
