package gateway

import (
	"bytes"
	"fmt"
	"sync"
	"testing"
)

func TestRingEviction(t *testing.T) {
	frame := func(seq uint64, n int) []byte { return bytes.Repeat([]byte{byte(seq)}, n) }
	tests := []struct {
		name          string
		frames, bytes int
		size          int      // of every frame
		put           uint64   // seqs 1..put stored
		want          []uint64 // seqs still held, of 1..put
	}{
		{"all held", 8, 1024, 10, 5, []uint64{1, 2, 3, 4, 5}},
		{"evicted by count", 4, 1024, 10, 6, []uint64{3, 4, 5, 6}},
		{"evicted by bytes", 64, 100, 30, 6, []uint64{4, 5, 6}}, // 3 frames of 30 fit in 100
		{"wrap skips the tail", 64, 100, 40, 5, []uint64{4, 5}}, // 40+40, then the third starts over at 0
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g := newRing(tt.frames, tt.bytes)
			for s := uint64(1); s <= tt.put; s++ {
				g.putBatch(1, []uint64{s}, [][]byte{frame(s, tt.size)})
			}
			var held []uint64
			for s := uint64(1); s <= tt.put; s++ {
				b, ok := g.get(nil, 1, s)
				if !ok {
					continue
				}
				if !bytes.Equal(b, frame(s, tt.size)) {
					t.Fatalf("seq %d: stored bytes changed", s)
				}
				held = append(held, s)
			}
			if fmt.Sprint(held) != fmt.Sprint(tt.want) {
				t.Fatalf("held %v, want %v", held, tt.want)
			}
			if _, ok := g.get(nil, 2, tt.put); ok {
				t.Fatal("a frame of another epoch was found")
			}
		})
	}
}

// Readers copying frames out while the relay writes never see torn bytes
// (run with -race).
func TestRingConcurrent(t *testing.T) {
	g := newRing(256, 64<<10)
	var wg sync.WaitGroup
	stop := make(chan struct{})
	wg.Add(1)
	go func() {
		defer wg.Done()
		var buf []byte
		for {
			select {
			case <-stop:
				return
			default:
			}
			for s := uint64(1); s < 5000; s += 7 {
				var ok bool
				buf, ok = g.get(buf[:0], 1, s)
				if ok && !bytes.Equal(buf, bytes.Repeat([]byte{byte(s)}, 100+int(s%50))) {
					t.Errorf("seq %d torn", s)
					return
				}
			}
		}
	}()
	seqs, frames := make([]uint64, 16), make([][]byte, 16)
	for s := uint64(1); s < 5000; s += 16 {
		for i := range 16 {
			seqs[i] = s + uint64(i)
			frames[i] = bytes.Repeat([]byte{byte(seqs[i])}, 100+int(seqs[i]%50))
		}
		g.putBatch(1, seqs, frames)
	}
	close(stop)
	wg.Wait()
}

func TestQueueBounds(t *testing.T) {
	q := newQueue(QueueConfig{Frames: 4, Bytes: 2 * (MaxPayload + HeaderLen + TagLen)})
	for i := range 4 {
		if err := q.push([]byte{byte(i)}); err != nil {
			t.Fatal(err)
		}
	}
	if err := q.push([]byte{9}); err != ErrQueueFull {
		t.Fatalf("fifth push: %v, want ErrQueueFull", err)
	}
	bs := make([][]byte, 3)
	if n := q.peek(bs); n != 3 || bs[0][0] != 0 || bs[1][0] != 1 || bs[2][0] != 2 {
		t.Fatalf("peek of 3: %d %v", n, bs)
	}
	q.done(3, 1) // three done, one of them refused
	if n := q.peek(bs); n != 1 || bs[0][0] != 3 {
		t.Fatalf("peek after done: %d %v", n, bs[:n])
	}
	q.done(1, 0)
	// By bytes: two frames of the largest size fill it, with wrapping.
	big := make([]byte, MaxPayload+HeaderLen+TagLen)
	for round := range 3 {
		if err := q.push(big); err != nil {
			t.Fatalf("round %d: %v", round, err)
		}
		if err := q.push(big[:100]); err != nil {
			t.Fatalf("round %d small: %v", round, err)
		}
		if err := q.push(big); err != ErrQueueFull {
			t.Fatalf("round %d: third push %v, want ErrQueueFull", round, err)
		}
		if n := q.peek(bs); n != 2 {
			t.Fatalf("round %d: peek %d, want 2", round, n)
		}
		q.done(2, 0)
	}
	if st := q.stats(); st.Written != 9 || st.Dropped["write_error"] != 1 || st.Dropped["queue_full"] != 4 || st.Depth != 0 {
		t.Fatalf("stats %+v", st)
	}
}
