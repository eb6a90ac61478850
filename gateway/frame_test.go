package gateway

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"errors"
	"net/netip"
	"os"
	"strings"
	"testing"
	"testing/quick"

	"github.com/google/go-cmp/cmp"
)

type vector struct {
	Name  string `json:"name"`
	Key   string `json:"key"`
	Frame string `json:"frame"`
	Error string `json:"error"`
	Want  *struct {
		Flags       uint8  `json:"flags"`
		IngressPort uint16 `json:"ingress_port"`
		Epoch       uint64 `json:"epoch"`
		Seq         uint64 `json:"seq"`
		Timestamp   int64  `json:"timestamp"`
		Source      string `json:"source"`
		Payload     string `json:"payload"`
	} `json:"want"`
}

func loadVectors(t testing.TB) []vector {
	t.Helper()
	b, err := os.ReadFile("testdata/vectors.json")
	if err != nil {
		t.Fatal(err)
	}
	var vs []vector
	if err := json.Unmarshal(b, &vs); err != nil {
		t.Fatalf("parsing testdata/vectors.json: %v", err)
	}
	if len(vs) < 4 {
		t.Fatalf("only %d vectors", len(vs))
	}
	return vs
}

func mustHex(t testing.TB, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(s)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// decoded is a comparable rendering of a decode result.
type decoded struct {
	Flags       uint8
	IngressPort uint16
	Epoch, Seq  uint64
	Timestamp   int64
	Source      string
	Payload     string
}

func TestVectors(t *testing.T) {
	for _, v := range loadVectors(t) {
		t.Run(v.Name, func(t *testing.T) {
			c := NewCodec(mustHex(t, v.Key))
			frame := mustHex(t, v.Frame)
			f, err := c.Decode(frame)
			if v.Error != "" {
				var r Reason
				if !errors.As(err, &r) || r.String() != v.Error {
					t.Fatalf("Decode error = %v, want reason %q", err, v.Error)
				}
				return
			}
			if err != nil {
				t.Fatalf("Decode: %v", err)
			}
			got := decoded{f.Flags, f.IngressPort, f.Epoch, f.Seq, f.Timestamp, f.Source.String(), hex.EncodeToString(f.Payload)}
			w := v.Want
			want := decoded{w.Flags, w.IngressPort, w.Epoch, w.Seq, w.Timestamp, w.Source, w.Payload}
			if diff := cmp.Diff(want, got); diff != "" {
				t.Fatalf("decoded (-want +got):\n%s", diff)
			}
			// The encoder must reproduce every v1 vector byte for byte.
			if int(frame[5]) == HeaderLen {
				re := c.AppendFrame(nil, f.Header, f.Payload)
				if !bytes.Equal(re, frame) {
					t.Fatalf("re-encoded\n got %x\nwant %x", re, frame)
				}
			}
		})
	}
}

// TestVectorsDocumented keeps docs/frame.md and testdata in step.
func TestVectorsDocumented(t *testing.T) {
	doc, err := os.ReadFile("../docs/frame.md")
	if err != nil {
		t.Fatal(err)
	}
	flat := strings.Join(strings.Fields(string(doc)), "")
	for _, v := range loadVectors(t) {
		if !strings.Contains(flat, v.Frame) {
			t.Errorf("vector %s (%s…) is not in docs/frame.md", v.Name, v.Frame[:16])
		}
	}
}

func TestDecodeRejects(t *testing.T) {
	key := bytes.Repeat([]byte{7}, 32)
	h := Header{IngressPort: 9, Epoch: 1, Seq: 1, Source: netip.MustParseAddrPort("198.18.0.1:1")}
	plain := NewCodec(nil).AppendFrame(nil, h, []byte("abc"))
	signed := NewCodec(key).AppendFrame(nil, h, []byte("abc"))
	mut := func(b []byte, f func([]byte) []byte) []byte { return f(bytes.Clone(b)) }
	tests := []struct {
		name  string
		key   []byte
		frame []byte
		want  Reason
	}{
		{"empty", nil, nil, ReasonShort},
		{"short", nil, plain[:HeaderLen-1], ReasonShort},
		{"magic", nil, mut(plain, func(b []byte) []byte { b[0] = 'X'; return b }), ReasonMagic},
		{"version 0", nil, mut(plain, func(b []byte) []byte { b[2] = 0; return b }), ReasonVersion},
		{"flag bit 7", nil, mut(plain, func(b []byte) []byte { b[3] |= 0x80; return b }), ReasonFlags},
		{"header length 0", nil, mut(plain, func(b []byte) []byte { b[4], b[5] = 0, 0; return b }), ReasonHeaderLen},
		{"header past end", nil, mut(plain, func(b []byte) []byte { b[4] = 0xff; return b }), ReasonLength},
		{"payload cut", nil, plain[:len(plain)-1], ReasonLength},
		{"payload long", nil, append(bytes.Clone(plain), 0), ReasonLength},
		{"tag cut", key, signed[:len(signed)-1], ReasonLength},
		{"tag missing", key, plain, ReasonTagMissing},
		{"tag flipped", key, mut(signed, func(b []byte) []byte { b[len(b)-1] ^= 1; return b }), ReasonTagBad},
		{"payload flipped", key, mut(signed, func(b []byte) []byte { b[HeaderLen] ^= 1; return b }), ReasonTagBad},
		{"wrong key", bytes.Repeat([]byte{8}, 32), signed, ReasonTagBad},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := NewCodec(tt.key).Decode(tt.frame)
			if err != tt.want {
				t.Fatalf("Decode = %v, want %v", err, tt.want)
			}
		})
	}
	// Without a key a tagged frame is accepted: the tag cannot be checked.
	if _, err := NewCodec(nil).Decode(signed); err != nil {
		t.Fatalf("keyless decode of signed frame: %v", err)
	}
}

func TestReasonNamesDistinct(t *testing.T) {
	seen := map[string]Reason{}
	for _, r := range Reasons() {
		if prev, ok := seen[r.String()]; ok || r.String() == "unknown" {
			t.Fatalf("reason %d name %q clashes with %d", r, r, prev)
		}
		seen[r.String()] = r
	}
	if len(seen) != 8 {
		t.Fatalf("%d reasons, want 8", len(seen))
	}
}

// TestRoundTrip is the property test: any header and payload, with or
// without a key, decode to what was encoded.
func TestRoundTrip(t *testing.T) {
	prop := func(port uint16, epoch, seq uint64, ts int64, ip [16]byte, v4 bool, sport uint16, payload []byte, keyed bool) bool {
		addr := netip.AddrFrom16(ip).Unmap()
		if v4 {
			addr = netip.AddrFrom4([4]byte(ip[:4]))
		}
		var key []byte
		if keyed {
			key = ip[:]
			key = append(key, ip[:]...)
		}
		c := NewCodec(key)
		h := Header{IngressPort: port, Epoch: epoch, Seq: seq, Timestamp: ts, Source: netip.AddrPortFrom(addr, sport)}
		if keyed {
			h.Flags = FlagAuth
		}
		b := c.AppendFrame([]byte("prefix"), h, payload)
		f, err := c.Decode(b[len("prefix"):])
		if err != nil {
			t.Logf("decode: %v", err)
			return false
		}
		if len(payload) == 0 {
			payload = []byte{}
		}
		return cmp.Equal(h, f.Header, cmp.Comparer(func(a, b netip.AddrPort) bool { return a == b })) && bytes.Equal(payload, f.Payload)
	}
	if err := quick.Check(prop, &quick.Config{MaxCount: 2000, Rand: nil}); err != nil {
		t.Fatal(err)
	}
}

func TestEncodeDecodeDoNotAllocate(t *testing.T) {
	c := NewCodec(bytes.Repeat([]byte{1}, 32))
	buf := make([]byte, 2048)
	h := Header{Epoch: 3, Seq: 4, Source: netip.MustParseAddrPort("198.18.0.1:5")}
	allocs := testing.AllocsPerRun(100, func() {
		n := c.EncodeInPlace(buf, &h, 100)
		if _, err := c.Decode(buf[:n]); err != nil {
			t.Fatal(err)
		}
	})
	if allocs != 0 {
		t.Fatalf("%.1f allocations per encode+decode, want 0", allocs)
	}
}

func FuzzDecode(f *testing.F) {
	for _, v := range loadVectors(f) {
		f.Add(mustHex(f, v.Frame), v.Key != "")
	}
	key := bytes.Repeat([]byte{0x5a}, 32)
	f.Fuzz(func(t *testing.T, b []byte, keyed bool) {
		var k []byte
		if keyed {
			k = key
		}
		c := NewCodec(k)
		fr, err := c.Decode(b)
		if err != nil {
			if _, ok := err.(Reason); !ok {
				t.Fatalf("error %T is not a Reason", err)
			}
			return
		}
		// Whatever decodes must re-encode to a frame that decodes the same.
		re := c.AppendFrame(nil, fr.Header, fr.Payload)
		fr2, err := c.Decode(re)
		if err != nil {
			t.Fatalf("re-decode: %v", err)
		}
		// A keyless codec accepts a tagged frame without checking it and
		// writes untagged frames, so only the auth flag may differ.
		want := fr.Header
		want.Flags = fr2.Flags
		if c.Authenticated() != (fr2.Flags == FlagAuth) || fr2.Header != want || !bytes.Equal(fr2.Payload, fr.Payload) {
			t.Fatalf("re-decode mismatch: %+v vs %+v", fr2, fr)
		}
	})
}

func BenchmarkEncodeDecode(b *testing.B) {
	for _, keyed := range []bool{false, true} {
		name := "plain"
		var key []byte
		if keyed {
			name, key = "hmac", bytes.Repeat([]byte{1}, 32)
		}
		b.Run(name, func(b *testing.B) {
			c := NewCodec(key)
			buf := make([]byte, 2048)
			h := Header{Epoch: 3, Source: netip.MustParseAddrPort("198.18.0.1:5")}
			b.ReportAllocs()
			b.SetBytes(256)
			for i := 0; b.Loop(); i++ {
				h.Seq = uint64(i)
				n := c.EncodeInPlace(buf, &h, 256)
				if _, err := c.Decode(buf[:n]); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// Key rotation: a codec with a next key accepts frames, repair requests
// and announcements tagged with either key and signs with the current one.
func TestKeyRotation(t *testing.T) {
	k1, k2 := bytes.Repeat([]byte{1}, 32), bytes.Repeat([]byte{2}, 32)
	old, mid, only2 := NewCodec(k1), NewCodec(k1, k2), NewCodec(k2)
	h := Header{Epoch: 1, Seq: 1}
	for _, tt := range []struct {
		name   string
		signer *Codec
		reader *Codec
		ok     bool
	}{
		{"old key read by old+next", old, mid, true},
		{"next key read by old+next", only2, mid, true},
		{"next key read by old only", only2, old, false},
		{"old+next signs with old", mid, old, true},
		{"old+next does not sign with next", mid, only2, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			_, err := tt.reader.Decode(tt.signer.AppendFrame(nil, h, []byte("p")))
			var n Nack
			nerr := tt.reader.DecodeNack(tt.signer.AppendNack(nil, &Nack{Epoch: 1, Ranges: []SeqRange{{1, 1}}}), &n)
			_, aerr := tt.reader.DecodeAnnounce(tt.signer.AppendAnnounce(nil, Announce{Epoch: 1, Seq: 1}))
			if (err == nil) != tt.ok || (nerr == nil) != tt.ok || (aerr == nil) != tt.ok {
				t.Fatalf("frame %v, request %v, announcement %v; want accepted = %v", err, nerr, aerr, tt.ok)
			}
		})
	}
}

func TestKeyFiles(t *testing.T) {
	dir := t.TempDir()
	p := dir + "/key"
	if err := GenerateKey(p); err != nil {
		t.Fatal(err)
	}
	if err := GenerateKey(p); err == nil {
		t.Fatal("GenerateKey overwrote an existing file")
	}
	st, _ := os.Stat(p)
	if st.Mode().Perm() != 0o600 {
		t.Fatalf("mode %04o, want 0600", st.Mode().Perm())
	}
	k, next, err := LoadKeys(p)
	if err != nil || len(k) != 32 || next != nil {
		t.Fatalf("LoadKeys: %x %x %v", k, next, err)
	}
	// A rotation: the next key as a second line.
	two := dir + "/two"
	os.WriteFile(two, []byte(strings.Repeat("ab", 32)+"\n\n"+strings.Repeat("cd", 32)+"\n"), 0o600)
	k, next, err = LoadKeys(two)
	if err != nil || k[0] != 0xab || next[0] != 0xcd {
		t.Fatalf("two keys: %x %x %v", k, next, err)
	}
	three := dir + "/three"
	os.WriteFile(three, []byte(strings.Repeat(strings.Repeat("ab", 32)+"\n", 3)), 0o600)
	if _, _, err := LoadKeys(three); err == nil || !strings.Contains(err.Error(), "3 keys") {
		t.Fatalf("three keys: %v", err)
	}
}
