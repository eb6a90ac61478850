package gateway

import (
	"fmt"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// Sequence order on a fake clock: frames after a hole wait for it, up to
// the hold time; late fills and the previous epoch's repairs still come.
func TestOrderer(t *testing.T) {
	ms := func(n int) int64 { return int64(time.Duration(n) * time.Millisecond) }
	type in struct {
		epoch, seq uint64 // 0, 0: only the clock moves (expire)
		at         int64
	}
	tests := []struct {
		name    string
		ins     []in
		want    []string
		skipped uint64
	}{
		{"in order", []in{{1, 5, 0}, {1, 6, 0}, {1, 7, 0}}, []string{"1/5", "1/6", "1/7"}, 0},
		{"a hole filled in time", []in{{1, 1, 0}, {1, 3, 0}, {1, 4, ms(1)}, {1, 2, ms(5)}, {1, 5, ms(6)}},
			[]string{"1/1", "1/2", "1/3", "1/4", "1/5"}, 0},
		{"a hole given up after the hold, filled late", []in{{1, 1, 0}, {1, 3, 0}, {0, 0, ms(99)}, {0, 0, ms(100)}, {1, 2, ms(150)}, {1, 4, ms(151)}},
			[]string{"1/1", "1/3", "1/2", "1/4"}, 1},
		{"two holes, each its own hold", []in{{1, 1, 0}, {1, 3, 0}, {1, 5, ms(50)}, {0, 0, ms(100)}, {0, 0, ms(150)}, {0, 0, ms(200)}},
			[]string{"1/1", "1/3", "1/5"}, 2},
		{"a new epoch flushes the old", []in{{1, 1, 0}, {1, 3, 0}, {2, 1, ms(10)}, {1, 2, ms(11)}, {2, 2, ms(12)}},
			[]string{"1/1", "1/3", "2/1", "1/2", "2/2"}, 1},
		{"a new epoch's first frames missing: held from 1", []in{{1, 1, 0}, {2, 3, ms(1)}, {2, 1, ms(2)}, {2, 2, ms(3)}},
			[]string{"1/1", "2/1", "2/2", "2/3"}, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o := newOrderer(100 * time.Millisecond)
			var got []string
			deliver := func(f *Frame, raw []byte) { got = append(got, fmt.Sprintf("%d/%d", f.Epoch, f.Seq)) }
			codec := NewCodec(nil)
			for _, x := range tt.ins {
				if x.seq == 0 {
					o.expire(x.at, deliver)
					continue
				}
				raw := codec.AppendFrame(nil, Header{Epoch: x.epoch, Seq: x.seq}, []byte("p"))
				f, _ := codec.Decode(raw)
				o.take(&f, raw, x.at, deliver)
				o.expire(x.at, deliver)
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Fatalf("delivery order (-want +got):\n%s", diff)
			}
			if o.skipped != tt.skipped {
				t.Fatalf("skipped %d, want %d", o.skipped, tt.skipped)
			}
		})
	}
}

// A hole far behind the newest frame cannot hold more than the ring: the
// holes in front are given up and nothing held is lost.
func TestOrdererBounded(t *testing.T) {
	o := newOrderer(time.Hour)
	var got []uint64
	deliver := func(f *Frame, _ []byte) { got = append(got, f.Seq) }
	codec := NewCodec(nil)
	take := func(seq uint64) {
		raw := codec.AppendFrame(nil, Header{Epoch: 1, Seq: seq}, make([]byte, 1000))
		f, _ := codec.Decode(raw)
		o.take(&f, raw, 0, deliver)
	}
	take(1)
	for s := uint64(3); s < 40000; s++ { // 2 never comes; 40k frames > 16 MiB of them held
		take(s)
	}
	for i := 1; i < len(got); i++ {
		if got[i] <= got[i-1] {
			t.Fatalf("out of order at %d: %d after %d", i, got[i], got[i-1])
		}
	}
	o.flush(deliver)
	if len(got) != 40000-2 || o.skipped != 1 {
		t.Fatalf("delivered %d, skipped %d; want %d, 1", len(got), o.skipped, 40000-2)
	}
}
