package gateway

import (
	"fmt"
	"net/netip"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// The repair schedule, on a fake clock: a gap waits the reorder allowance,
// is asked for, retried with backoff for what is still missing, and given
// up at the deadline.
func TestGapSchedule(t *testing.T) {
	relay := netip.MustParseAddrPort("198.18.0.11:40000")
	ms := func(n float64) int64 { return int64(n * float64(time.Millisecond)) }
	type step struct {
		at     int64
		frames []uint64 // arrive at `at` (before due runs)
		want   []string // requests due runs at `at`
	}
	render := func(reqs []request) []string {
		var out []string
		for _, r := range reqs {
			s := r.to.String()
			for _, rg := range r.nack.Ranges {
				s += fmt.Sprintf(" %d+%d", rg.First, rg.Count)
			}
			out = append(out, s)
		}
		return out
	}
	tests := []struct {
		name  string
		steps []step
		want  struct{ Repaired, Unrecovered, Reordered uint64 }
	}{
		{"reordered within the allowance: never asked", []step{
			{0, []uint64{1, 2, 4}, nil},
			{ms(1), []uint64{3}, nil},
			{ms(3), nil, nil},
		}, struct{ Repaired, Unrecovered, Reordered uint64 }{0, 0, 1}},
		{"asked after 2 ms, repaired", []step{
			{0, []uint64{1, 2, 5}, nil},
			{ms(1), nil, nil},
			{ms(2), nil, []string{"198.18.0.11:40000 3+2"}},
			{ms(3), []uint64{3, 4}, nil},
			{ms(20), nil, nil},
		}, struct{ Repaired, Unrecovered, Reordered uint64 }{2, 0, 0}},
		{"retried for what is still missing, with backoff", []step{
			{0, []uint64{1, 10}, nil},
			{ms(2), nil, []string{"198.18.0.11:40000 2+8"}},
			{ms(3), []uint64{2, 3, 4, 6, 7, 8}, nil},
			{ms(12), nil, nil}, // the answers pushed the retry out
			{ms(13), nil, []string{"198.18.0.11:40000 5+1 9+1"}},
			{ms(14), []uint64{9}, nil},
			{ms(40), nil, []string{"198.18.0.11:40000 5+1"}},
			{ms(80), nil, []string{"198.18.0.11:40000 5+1"}},
			{ms(2001), nil, nil}, // deadline: 5 given up
		}, struct{ Repaired, Unrecovered, Reordered uint64 }{7, 1, 0}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var tr tracker
			g := gaps{cfg: ReceiverRepair{}.withDefaults()}
			var reordered uint64
			for _, st := range tt.steps {
				for _, seq := range st.frames {
					switch tr.check(1, seq) {
					case fill:
						if !g.filled(1, seq, st.at) {
							reordered++
						}
					}
					if tr.gapLast != 0 {
						g.add(1, tr.gapFirst, tr.gapLast, relay, st.at, &tr)
						tr.gapLast = 0
					}
				}
				reqs, _ := g.due(st.at, &tr, nil)
				if diff := cmp.Diff(st.want, render(reqs)); diff != "" {
					t.Fatalf("at %v (-want +got):\n%s", time.Duration(st.at), diff)
				}
			}
			got := struct{ Repaired, Unrecovered, Reordered uint64 }{g.repaired, g.unrecovered, reordered}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Fatalf("(-want +got):\n%s", diff)
			}
			if len(g.open) != 0 {
				t.Fatalf("gaps still open: %+v", g.open)
			}
		})
	}
}

// A tail announced by the relay is asked for; a new epoch gives up the old
// one's gaps; repair off only counts.
func TestGapAnnounceEpochAndOff(t *testing.T) {
	relay := netip.MustParseAddrPort("198.18.0.11:40000")
	var tr tracker
	g := gaps{cfg: ReceiverRepair{}.withDefaults()}
	tr.check(1, 1)
	if !tr.announce(1, 3) {
		t.Fatal("announce of a later seq opened no gap")
	}
	g.add(1, tr.gapFirst, tr.gapLast, relay, 0, &tr)
	reqs, _ := g.due(int64(2*time.Millisecond), &tr, nil)
	if len(reqs) != 1 || reqs[0].nack.Ranges[0] != (SeqRange{2, 2}) {
		t.Fatalf("requests %+v, want 2+2", reqs)
	}
	if tr.announce(1, 3) || tr.announce(0, 9) {
		t.Fatal("an announcement of nothing new, or of another epoch, opened a gap")
	}
	// A takeover: epoch 2 begins. Epoch 1's gap stays open, and a repair
	// of it (from the deposed primary, still alive) is accepted.
	g.closeEpoch(&tr, tr.prev.epoch, tr.prev.valid)
	if v := tr.check(2, 1); v != accept {
		t.Fatalf("epoch 2's first frame: %v", v)
	}
	if v := tr.check(1, 2); v != fill || !g.filled(1, 2, int64(3*time.Millisecond)) {
		t.Fatalf("a repair of epoch 1 after the takeover: %v", v)
	}
	if v := tr.check(1, 4); v != stale {
		t.Fatalf("a frame of epoch 1 beyond what was taken from it: %v, want stale", v)
	}
	// Another takeover: epoch 1 is two behind; its gap is given up.
	g.closeEpoch(&tr, tr.prev.epoch, tr.prev.valid)
	tr.check(3, 1)
	if g.unrecovered != 1 || g.repaired != 1 || len(g.open) != 0 {
		t.Fatalf("after two takeovers: unrecovered %d, repaired %d, open %d; want 1, 1, 0", g.unrecovered, g.repaired, len(g.open))
	}
	if v := tr.check(1, 3); v != stale {
		t.Fatalf("epoch 1 after epoch 3: %v, want stale", v)
	}

	var tr2 tracker
	off := gaps{cfg: ReceiverRepair{Off: true}.withDefaults()}
	tr2.check(1, 1)
	tr2.check(1, 5)
	off.add(1, tr2.gapFirst, tr2.gapLast, relay, 0, &tr2)
	if reqs, next := off.due(int64(3*time.Millisecond), &tr2, nil); len(reqs) != 0 || next != int64(DefaultRepairDeadline) {
		t.Fatalf("repair off: requests %v, next %v", reqs, time.Duration(next))
	}
	off.due(int64(DefaultRepairDeadline), &tr2, nil)
	if off.unrecovered != 3 {
		t.Fatalf("repair off: unrecovered %d, want 3", off.unrecovered)
	}
}
