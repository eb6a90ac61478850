package consul

import (
	"encoding/json"
	"time"
)

// leaderValue is the leader key's value. A holder writes Node, Since and
// Session when it acquires; releasing, it writes Released (if clean), its
// epoch and Session. The lease record and the dropped marker have the same
// form.
type leaderValue struct {
	Node  string    `json:"node"`
	Since time.Time `json:"since,omitzero"`
	// Released says the last holder dropped the VIP before releasing and
	// had held it past its own T_wait, so no node holds the VIP now and
	// the next holder need not wait.
	Released bool   `json:"released,omitempty"`
	Epoch    uint64 `json:"epoch,omitempty"`
	// Session is the term's session, written with the acquisition and
	// kept on release: a free key names the last term, whose dropped
	// marker a successor may then trust.
	Session string `json:"session,omitempty"`
	// Renewal counts a term's lease renewals, in the lease record only
	// (<key>.lease): people read it; standbys go by its ModifyIndex.
	Renewal uint64 `json:"renewal,omitempty"`
}

func (v leaderValue) encode() []byte {
	b, _ := json.Marshal(v)
	return b
}

// parseValue reads a leader value; anything else (an operator's PUT) is
// treated as an unclean state.
func parseValue(b []byte) leaderValue {
	var v leaderValue
	if json.Unmarshal(b, &v) != nil {
		return leaderValue{}
	}
	return v
}
