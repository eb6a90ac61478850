package gateway

import (
	"encoding/hex"
	"fmt"
	"os"
	"strings"
)

// LoadKey reads an HMAC key written as hex (at least 64 hex digits, i.e. 32
// bytes; surrounding whitespace ignored), as `openssl rand -hex 32` makes.
// It refuses a file that group or others can read, because anyone who can
// read the key can forge frames.
func LoadKey(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("opening key file: %w", err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("key file %s: %w", path, err)
	}
	if mode := st.Mode().Perm(); mode&0o077 != 0 {
		return nil, fmt.Errorf("key file %s has mode %04o: it must not be readable by group or others (chmod 600 %s)", path, mode, path)
	}
	buf := make([]byte, 4096)
	n, err := f.Read(buf)
	if err != nil {
		return nil, fmt.Errorf("reading key file %s: %w", path, err)
	}
	text := strings.TrimSpace(string(buf[:n]))
	key, err := hex.DecodeString(text)
	if err != nil {
		return nil, fmt.Errorf("key file %s: not hex: %w", path, err)
	}
	if len(key) < MinKeyLen {
		return nil, fmt.Errorf("key file %s: key is %d bytes, want at least %d (%d hex digits; e.g. openssl rand -hex 32)", path, len(key), MinKeyLen, 2*MinKeyLen)
	}
	return key, nil
}
