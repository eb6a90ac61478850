package gateway

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"strings"
)

// LoadKey reads the current key of a key file (LoadKeys).
func LoadKey(path string) ([]byte, error) {
	key, _, err := LoadKeys(path)
	return key, err
}

// LoadKeys reads a key file: one HMAC key written as hex (at least 64 hex
// digits, i.e. 32 bytes), as `openssl rand -hex 32` or `driftgate key
// generate` makes, or two, one per line, during a rotation: the first is
// the current key (relays sign with it), the second the next one
// (accepted too). Blank lines and surrounding whitespace are ignored. It
// refuses a file that group or others can read, because anyone who can
// read the key can forge frames.
func LoadKeys(path string) (current, next []byte, err error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, nil, fmt.Errorf("opening key file: %w", err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, nil, fmt.Errorf("key file %s: %w", path, err)
	}
	if mode := st.Mode().Perm(); mode&0o077 != 0 {
		return nil, nil, fmt.Errorf("key file %s has mode %04o: it must not be readable by group or others (chmod 600 %s)", path, mode, path)
	}
	buf := make([]byte, 4096)
	n, err := f.Read(buf)
	if err != nil {
		return nil, nil, fmt.Errorf("reading key file %s: %w", path, err)
	}
	var keys [][]byte
	for i, line := range strings.Split(string(buf[:n]), "\n") {
		line = strings.TrimSpace(line)
		if line == "" {
			continue
		}
		key, err := hex.DecodeString(line)
		if err != nil {
			return nil, nil, fmt.Errorf("key file %s, line %d: not hex: %w", path, i+1, err)
		}
		if len(key) < MinKeyLen {
			return nil, nil, fmt.Errorf("key file %s, line %d: key is %d bytes, want at least %d (%d hex digits; e.g. driftgate key generate)", path, i+1, len(key), MinKeyLen, 2*MinKeyLen)
		}
		keys = append(keys, key)
	}
	switch len(keys) {
	case 0:
		return nil, nil, fmt.Errorf("key file %s: no key", path)
	case 1:
		return keys[0], nil, nil
	case 2:
		return keys[0], keys[1], nil
	}
	return nil, nil, fmt.Errorf("key file %s: %d keys, want one, or two during a rotation (current, then next)", path, len(keys))
}

// GenerateKey writes a new random 32-byte key, as hex, to a file that must
// not exist yet, readable by its owner only.
func GenerateKey(path string) error {
	key := make([]byte, MinKeyLen)
	if _, err := rand.Read(key); err != nil {
		return fmt.Errorf("generating a key: %w", err)
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("writing the key: %w", err)
	}
	if _, err := fmt.Fprintln(f, hex.EncodeToString(key)); err != nil {
		f.Close()
		os.Remove(path)
		return fmt.Errorf("writing the key to %s: %w", path, err)
	}
	return f.Close()
}
