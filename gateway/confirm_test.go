package gateway

import (
	"bytes"
	"fmt"
	"net/netip"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// testReceiver is a receiver fed through process, without sockets.
type testReceiver struct {
	*Receiver
	col *collector
	rs  *readSide
}

func newTestReceiver(t *testing.T, cfg ReceiverConfig) *testReceiver {
	t.Helper()
	col := &collector{}
	cfg.Listen, cfg.Deliver = netip.MustParseAddrPort("198.18.0.11:6000"), col
	cfg.Repair.Off = true // no sockets here to ask through
	r, err := NewReceiver(cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	rs := &readSide{bufs: make([][]byte, 1), metas: make([]meta, 1)}
	rs.bufs[0] = make([]byte, 2048)
	return &testReceiver{r, col, rs}
}

// send delivers one frame (epoch, seq) as if it came from `from`.
func (tr *testReceiver) send(from string, epoch, seq uint64) {
	b := NewCodec(nil).AppendFrame(tr.rs.bufs[0][:0], Header{Epoch: epoch, Seq: seq}, []byte("x"))
	tr.rs.metas[0] = meta{N: len(b), From: netip.MustParseAddrPort(from)}
	tr.process(tr.rs, 1)
}

func (tr *testReceiver) got() []string {
	tr.col.mu.Lock()
	defer tr.col.mu.Unlock()
	var out []string
	for _, f := range tr.col.frames {
		out = append(out, fmt.Sprintf("%d/%d", f.Epoch, f.Seq))
	}
	return out
}

// A stray frame with a made-up epoch fences nobody: it waits for a
// confirmation that never comes and is dropped; the real feed goes on.
func TestConfirmStrayEpoch(t *testing.T) {
	r := newTestReceiver(t, ReceiverConfig{ConfirmEpochs: true, HoldTime: 50 * time.Millisecond})
	const primary = "198.18.0.11:40000"
	r.ConfirmEpoch(5)
	r.send(primary, 5, 1)
	r.send("198.18.0.99:1", 1_000_000_000_000, 1) // the stray one
	r.send(primary, 5, 2)
	r.send(primary, 5, 3)
	r.mu.Lock()
	r.pend.expire(int64(time.Since(r.base))+int64(time.Second), &r.st.Unconfirmed)
	r.mu.Unlock()
	r.send(primary, 5, 4)
	if diff := cmp.Diff([]string{"5/1", "5/2", "5/3", "5/4"}, r.got()); diff != "" {
		t.Fatalf("delivered (-want +got):\n%s", diff)
	}
	if st := r.Stats(); st.Unconfirmed != 1 || st.StaleEpoch != 0 || st.HeldUnconfirmed != 0 {
		t.Fatalf("stats: unconfirmed %d, stale %d, held %d; want 1, 0, 0", st.Unconfirmed, st.StaleEpoch, st.HeldUnconfirmed)
	}
}

// A takeover whose first frames outrun the confirmation: held, then taken
// in order the moment Consul shows the term; nothing lost.
func TestConfirmTakeover(t *testing.T) {
	r := newTestReceiver(t, ReceiverConfig{ConfirmEpochs: true})
	r.ConfirmEpoch(5)
	r.send("198.18.0.11:40000", 5, 1)
	r.send("198.18.0.12:40000", 7, 1)
	r.send("198.18.0.12:40000", 7, 2)
	if diff := cmp.Diff([]string{"5/1"}, r.got()); diff != "" {
		t.Fatalf("before the confirmation (-want +got):\n%s", diff)
	}
	r.ConfirmEpoch(7)
	r.send("198.18.0.12:40000", 7, 3)
	r.send("198.18.0.11:40000", 5, 2) // the deposed primary, late: stale
	if diff := cmp.Diff([]string{"5/1", "7/1", "7/2", "7/3"}, r.got()); diff != "" {
		t.Fatalf("after (-want +got):\n%s", diff)
	}
	if st := r.Stats(); st.Unconfirmed != 0 || st.StaleEpoch != 1 || st.ConfirmWait <= 0 || st.Confirmed != 7 {
		t.Fatalf("stats %+v", st)
	}
}

// Consul rebuilt: its indexes start low again, and the receiver follows it
// — on Consul's word only; a frame of a lower epoch alone stays stale.
func TestConfirmRegression(t *testing.T) {
	r := newTestReceiver(t, ReceiverConfig{ConfirmEpochs: true})
	r.ConfirmEpoch(100)
	r.send("198.18.0.11:40000", 100, 1)
	r.send("198.18.0.12:40000", 3, 1) // before Consul says so: stale
	select {
	case <-r.StaleEpochs(): // the watch of the leader key is told to look again
	default:
		t.Fatal("a stale frame: nothing on StaleEpochs")
	}
	r.send("198.18.0.12:40000", 3, 1)
	select {
	case <-r.StaleEpochs():
		t.Fatal("StaleEpochs heard twice within a second")
	default:
	}
	r.ConfirmEpoch(3)
	r.send("198.18.0.12:40000", 3, 2)
	r.send("198.18.0.11:40000", 100, 2) // the old cluster's term: now above the confirmed one, held
	if diff := cmp.Diff([]string{"100/1", "3/2"}, r.got()); diff != "" {
		t.Fatalf("delivered (-want +got):\n%s", diff)
	}
	if st := r.Stats(); st.EpochRegressions != 1 || st.StaleEpoch != 2 || st.HeldUnconfirmed != 1 {
		t.Fatalf("stats: regressions %d, stale %d, held %d; want 1, 2, 1", st.EpochRegressions, st.StaleEpoch, st.HeldUnconfirmed)
	}
}

// Only the registered nodes (and configured prefixes) are sources.
func TestSources(t *testing.T) {
	r := newTestReceiver(t, ReceiverConfig{Sources: Allowlist{netip.MustParsePrefix("198.19.0.0/24")}})
	r.SetSources([]netip.Addr{netip.MustParseAddr("198.18.0.11")})
	r.send("198.18.0.11:40000", 5, 1)
	r.send("198.18.0.66:40000", 5, 2) // a foreign host
	r.send("198.19.0.7:40000", 5, 3)  // a configured prefix
	if diff := cmp.Diff([]string{"5/1", "5/3"}, r.got()); diff != "" {
		t.Fatalf("delivered (-want +got):\n%s", diff)
	}
	if st := r.Stats(); st.ForeignSource != 1 || st.Received != 3 {
		t.Fatalf("stats: foreign %d, received %d", st.ForeignSource, st.Received)
	}
}

// Without Consul, --max-epoch-step refuses a frame whose epoch jumps too
// far: the stray relay with --epoch 1000000000000 fences nobody.
func TestMaxEpochStep(t *testing.T) {
	r := newTestReceiver(t, ReceiverConfig{MaxEpochStep: 1000})
	r.send("198.18.0.11:40000", 5, 1)
	r.send("198.18.0.99:40000", 1_000_000_000_000, 1)
	r.send("198.18.0.11:40000", 5, 2)
	r.send("198.18.0.12:40000", 900, 1) // a takeover within the step
	if diff := cmp.Diff([]string{"5/1", "5/2", "900/1"}, r.got()); diff != "" {
		t.Fatalf("delivered (-want +got):\n%s", diff)
	}
	if st := r.Stats(); st.EpochStep != 1 {
		t.Fatalf("epoch_step %d, want 1", st.EpochStep)
	}
}

// Without ConfirmEpochs, ConfirmEpoch (the agent calls it on its own
// acquisitions) changes nothing but a regression.
func TestConfirmOff(t *testing.T) {
	r := newTestReceiver(t, ReceiverConfig{})
	r.ConfirmEpoch(5)
	r.send("198.18.0.11:40000", 7, 1) // not held: confirmation is off
	if diff := cmp.Diff([]string{"7/1"}, r.got()); diff != "" {
		t.Fatalf("delivered (-want +got):\n%s", diff)
	}
}

// A host admitted only by a prefix is held to SourceRate datagrams a
// second; a registered node is not limited.
func TestSourceRate(t *testing.T) {
	r := newTestReceiver(t, ReceiverConfig{Sources: Allowlist{netip.MustParsePrefix("198.19.0.0/24")}, SourceRate: 100})
	r.SetSources([]netip.Addr{netip.MustParseAddr("198.18.0.11")})
	for s := uint64(1); s <= 300; s++ {
		r.send("198.19.0.7:40000", 5, s) // at once: a second's worth passes
	}
	for s := uint64(301); s <= 600; s++ {
		r.send("198.18.0.11:40000", 5, s)
	}
	st := r.Stats()
	if st.SourceRateLimited < 190 || st.SourceRateLimited > 200 || st.Delivered != st.Received-st.SourceRateLimited {
		t.Fatalf("rate limited %d of 300 from the prefix host (want about 200), delivered %d of %d", st.SourceRateLimited, st.Delivered, st.Received)
	}
}

// A replay after a receiver restart: a fresh receiver has no window to
// tell a captured frame from a new one, but the relay's timestamp (under
// the tag, with a key) says it was relayed before the receiver started.
func TestReplayAfterRestart(t *testing.T) {
	key := bytes.Repeat([]byte{3}, 32)
	r := newTestReceiver(t, ReceiverConfig{Key: key})
	old := time.Now().Add(-time.Minute).UnixNano()
	for _, tc := range []struct {
		ts  int64
		seq uint64
	}{{old, 100}, {old, 101}, {time.Now().UnixNano(), 102}, {old, 99}} {
		b := NewCodec(key).AppendFrame(r.rs.bufs[0][:0], Header{Epoch: 5, Seq: tc.seq, Timestamp: tc.ts}, []byte("x"))
		r.rs.metas[0] = meta{N: len(b), From: netip.MustParseAddrPort("198.18.0.11:40000")}
		r.process(r.rs, 1)
	}
	if diff := cmp.Diff([]string{"5/102"}, r.got()); diff != "" {
		t.Fatalf("delivered (-want +got):\n%s", diff)
	}
	if st := r.Stats(); st.Replayed != 3 {
		t.Fatalf("replayed %d, want 3", st.Replayed)
	}
}
