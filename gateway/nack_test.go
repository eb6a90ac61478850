package gateway

import (
	"bytes"
	"encoding/json"
	"errors"
	"os"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// repairVector is one repair request or announcement of
// testdata/repair_vectors.json, computed independently of this package
// (Python struct and hmac) and shown in docs/frame.md.
type repairVector struct {
	Name  string `json:"name"`
	Kind  string `json:"kind"` // "nack" or "announce"
	Key   string `json:"key"`
	Bytes string `json:"bytes"`
	Error string `json:"error"` // "malformed" or "tag"
	Want  *struct {
		Epoch     uint64      `json:"epoch"`
		Timestamp int64       `json:"timestamp"`
		Ranges    [][2]uint64 `json:"ranges"`
		Seq       uint64      `json:"seq"`
	} `json:"want"`
}

func loadRepairVectors(t testing.TB) []repairVector {
	t.Helper()
	b, err := os.ReadFile("testdata/repair_vectors.json")
	if err != nil {
		t.Fatal(err)
	}
	var vs []repairVector
	if err := json.Unmarshal(b, &vs); err != nil {
		t.Fatal(err)
	}
	return vs
}

func TestRepairVectors(t *testing.T) {
	for _, v := range loadRepairVectors(t) {
		t.Run(v.Name, func(t *testing.T) {
			c := NewCodec(mustHex(t, v.Key))
			b := mustHex(t, v.Bytes)
			wantErr := map[string]error{"": nil, "malformed": ErrNackMalformed, "tag": ErrNackTag}[v.Error]
			switch v.Kind {
			case "nack":
				var n Nack
				err := c.DecodeNack(b, &n)
				if !errors.Is(err, wantErr) || (err != nil) != (wantErr != nil) {
					t.Fatalf("DecodeNack: %v, want %v", err, wantErr)
				}
				if err != nil {
					return
				}
				want := Nack{Epoch: v.Want.Epoch, Timestamp: v.Want.Timestamp}
				for _, r := range v.Want.Ranges {
					want.Ranges = append(want.Ranges, SeqRange{First: r[0], Count: uint32(r[1])})
				}
				if diff := cmp.Diff(want, n); diff != "" {
					t.Fatalf("(-want +got):\n%s", diff)
				}
				if re := c.AppendNack(nil, &n); !bytes.Equal(re, b) {
					t.Fatalf("re-encoded\n got %x\nwant %x", re, b)
				}
			case "announce":
				a, err := c.DecodeAnnounce(b)
				if !errors.Is(err, wantErr) || (err != nil) != (wantErr != nil) {
					t.Fatalf("DecodeAnnounce: %v, want %v", err, wantErr)
				}
				if err != nil {
					return
				}
				if want := (Announce{Epoch: v.Want.Epoch, Seq: v.Want.Seq}); a != want {
					t.Fatalf("got %+v, want %+v", a, want)
				}
				if re := c.AppendAnnounce(nil, a); !bytes.Equal(re, b) {
					t.Fatalf("re-encoded\n got %x\nwant %x", re, b)
				}
			default:
				t.Fatalf("kind %q", v.Kind)
			}
		})
	}
}

func TestRepairVectorsDocumented(t *testing.T) {
	doc, err := os.ReadFile("../docs/frame.md")
	if err != nil {
		t.Fatal(err)
	}
	flat := strings.Join(strings.Fields(string(doc)), "")
	for _, v := range loadRepairVectors(t) {
		if !strings.Contains(flat, v.Bytes) || !strings.Contains(string(doc), "### "+v.Name) {
			t.Errorf("vector %s is not in docs/frame.md", v.Name)
		}
	}
}

func TestDecodeNackDoesNotAllocate(t *testing.T) {
	c := NewCodec(bytes.Repeat([]byte{1}, 32))
	b := c.AppendNack(nil, &Nack{Epoch: 3, Timestamp: 5, Ranges: []SeqRange{{1, 2}, {9, 4}}})
	n := Nack{Ranges: make([]SeqRange, 0, MaxNackRanges)}
	if a := testing.AllocsPerRun(100, func() { _ = c.DecodeNack(b, &n) }); a != 0 {
		t.Fatalf("%v allocations per decode", a)
	}
}

// FuzzDecodeNack: no input panics the decoder, a decoded request respects
// the limits, and it encodes back to the same bytes.
func FuzzDecodeNack(f *testing.F) {
	for _, v := range loadRepairVectors(f) {
		if v.Kind == "nack" && v.Key == "" {
			f.Add(mustHex(f, v.Bytes))
		}
	}
	c := NewCodec(nil)
	f.Fuzz(func(t *testing.T, b []byte) {
		var n Nack
		if err := c.DecodeNack(b, &n); err != nil {
			return
		}
		total := 0
		for _, r := range n.Ranges {
			total += int(r.Count)
		}
		if len(n.Ranges) == 0 || len(n.Ranges) > MaxNackRanges || total > MaxNackFrames {
			t.Fatalf("decoded %+v beyond the limits", n)
		}
		if int(b[5]) == NackHeaderLen && b[4] == 0 && b[3] == 0 && !bytes.Equal(c.AppendNack(nil, &n), b) {
			t.Fatalf("%x decoded to %+v, which encodes differently", b, n)
		}
	})
}
