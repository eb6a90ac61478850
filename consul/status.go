package consul

import (
	"context"
	"fmt"
	"slices"
	"time"

	"github.com/hashicorp/consul/api"
)

// NodeStatus is one node's registration as the catalog sees it.
type NodeStatus struct {
	Node      string
	ServiceID string
	Role      string // from the service meta
	Primary   bool   // carries the primary tag
	Checks    map[string]string
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
	for _, e := range entries {
		ns := NodeStatus{Node: e.Node.Node, ServiceID: e.Service.ID, Role: e.Service.Meta[metaRole],
			Primary: slices.Contains(e.Service.Tags, PrimaryTag), Checks: map[string]string{}}
		for _, ch := range e.Checks {
			ns.Checks[ch.Name] = ch.Status
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
