package gateway

import (
	"testing"

	"github.com/google/go-cmp/cmp"
)

type ev struct{ epoch, seq uint64 }

type trackerResult struct {
	Verdicts                     []verdict
	Lost, Gaps, Epochs, Restarts uint64
}

func runTracker(evs []ev) trackerResult {
	var t tracker
	var r trackerResult
	for _, e := range evs {
		r.Verdicts = append(r.Verdicts, t.check(e.epoch, e.seq))
	}
	r.Lost, r.Gaps, r.Epochs, r.Restarts = t.lost, t.gaps, t.epochs, t.restarts
	return r
}

func seqs(epoch uint64, from, to uint64) []ev {
	var out []ev
	for s := from; s <= to; s++ {
		out = append(out, ev{epoch, s})
	}
	return out
}

func repeat(v verdict, n int) []verdict {
	out := make([]verdict, n)
	for i := range out {
		out[i] = v
	}
	return out
}

func TestTracker(t *testing.T) {
	A, F, D, S, L := accept, fill, duplicate, stale, late
	tests := []struct {
		name string
		evs  []ev
		want trackerResult
	}{
		{"in order", seqs(5, 1, 4), trackerResult{Verdicts: []verdict{A, A, A, A}, Epochs: 1}},
		{"joins mid-feed without loss", seqs(5, 100, 102), trackerResult{Verdicts: []verdict{A, A, A}, Epochs: 1}},
		{"head of a feed lost", []ev{{5, 4}, {5, 5}, {5, 2}}, trackerResult{Verdicts: []verdict{A, A, F}, Lost: 2, Gaps: 1, Epochs: 1}},
		{"joins beyond the head without loss", seqs(5, headGap+1, headGap+2), trackerResult{Verdicts: []verdict{A, A}, Epochs: 1}},
		{"duplicate dropped", []ev{{5, 1}, {5, 2}, {5, 2}, {5, 1}}, trackerResult{Verdicts: []verdict{A, A, D, D}, Epochs: 1}},
		{"gap counted", []ev{{5, 1}, {5, 4}, {5, 5}}, trackerResult{Verdicts: []verdict{A, A, A}, Lost: 2, Gaps: 1, Epochs: 1}},
		{"reorder fills gap", []ev{{5, 1}, {5, 3}, {5, 2}, {5, 2}}, trackerResult{Verdicts: []verdict{A, A, F, D}, Lost: 0, Gaps: 1, Epochs: 1}},
		{"stale epoch rejected", []ev{{5, 1}, {7, 1}, {5, 2}, {7, 2}}, trackerResult{Verdicts: []verdict{A, A, S, A}, Epochs: 2}},
		{"new epoch counts frames lost at takeover", []ev{{5, 100}, {6, 3}}, trackerResult{Verdicts: []verdict{A, A}, Lost: 2, Gaps: 1, Epochs: 2}},
		{"previous epoch's holes filled after a takeover", []ev{{5, 1}, {5, 4}, {6, 1}, {5, 2}, {5, 2}, {5, 5}, {6, 2}}, trackerResult{Verdicts: []verdict{A, A, A, F, D, S, A}, Lost: 1, Gaps: 1, Epochs: 2}},
		{"two epochs back is stale", []ev{{5, 1}, {5, 3}, {6, 1}, {7, 1}, {5, 2}}, trackerResult{Verdicts: []verdict{A, A, A, A, S}, Lost: 1, Gaps: 1, Epochs: 3}},
		{"new epoch restarts sequence space", []ev{{5, 1}, {5, 2}, {6, 1}, {6, 2}}, trackerResult{Verdicts: []verdict{A, A, A, A}, Epochs: 2}},
		{"behind window is late", []ev{{5, 1}, {5, 1 + WindowSize}, {5, 1}}, trackerResult{Verdicts: []verdict{A, A, L}, Lost: WindowSize - 1, Gaps: 1, Epochs: 1}},
		{"edge of window still deduplicated", []ev{{5, 1}, {5, WindowSize}, {5, 1}}, trackerResult{Verdicts: []verdict{A, A, D}, Lost: WindowSize - 2, Gaps: 1, Epochs: 1}},
		{"window forgets what slid out", []ev{{5, 100}, {5, 100 + WindowSize}, {5, 100 + WindowSize - 1}}, trackerResult{Verdicts: []verdict{A, A, F}, Lost: WindowSize - 2, Gaps: 1, Epochs: 1}},
		{"standalone relay restart resets", append(seqs(0, 1, WindowSize+10), ev{0, 1}, ev{0, 2}), trackerResult{Verdicts: append(repeat(A, WindowSize+10), A, A), Epochs: 2, Restarts: 1}},
		{"standalone duplicate inside window still dropped", []ev{{0, 1}, {0, 5}, {0, 5}}, trackerResult{Verdicts: []verdict{A, A, D}, Lost: 3, Gaps: 1, Epochs: 1}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if diff := cmp.Diff(tt.want, runTracker(tt.evs)); diff != "" {
				t.Fatalf("(-want +got):\n%s", diff)
			}
		})
	}
}

// TestTrackerExactlyOnce delivers a shuffled stream with duplicates and
// checks that every sequence number is accepted exactly once.
func TestTrackerExactlyOnce(t *testing.T) {
	var tr tracker
	const n = 5000
	order := make([]uint64, 0, 2*n)
	for s := uint64(1); s <= n; s++ {
		order = append(order, s)
		if s%7 == 0 { // duplicate a little later
			order = append(order, s)
		}
	}
	// Local reordering within 32 positions, deterministic.
	for i := 0; i+32 < len(order); i += 17 {
		order[i], order[i+31] = order[i+31], order[i]
	}
	got := map[uint64]int{}
	for _, s := range order {
		if v := tr.check(9, s); v == accept || v == fill {
			got[s]++
		}
	}
	for s := uint64(1); s <= n; s++ {
		if got[s] != 1 {
			t.Fatalf("seq %d accepted %d times", s, got[s])
		}
	}
	if tr.lost != 0 {
		t.Fatalf("lost = %d after every frame arrived", tr.lost)
	}
}
