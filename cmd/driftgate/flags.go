package main

import (
	"net/netip"
	"strings"

	"driftgate/gateway"
)

func parseAddrPorts(flag string, vals []string) ([]netip.AddrPort, error) {
	out := make([]netip.AddrPort, 0, len(vals))
	for _, v := range vals {
		ap, err := parseAddrPort(flag, v)
		if err != nil {
			return nil, err
		}
		out = append(out, ap)
	}
	return out, nil
}

func parseAddrPort(flag, v string) (netip.AddrPort, error) {
	ap, err := netip.ParseAddrPort(strings.TrimSpace(v))
	if err != nil {
		return netip.AddrPort{}, usagef("--%s %q: want IP:PORT (IPv6 as [ADDR]:PORT): %v", flag, v, err)
	}
	if ap.Port() == 0 {
		return netip.AddrPort{}, usagef("--%s %q: port 0 is not allowed", flag, v)
	}
	return ap, nil
}

func parseAllow(flag string, vals []string) (gateway.Allowlist, error) {
	var a gateway.Allowlist
	for _, v := range vals {
		p, err := netip.ParsePrefix(strings.TrimSpace(v))
		if err != nil {
			return nil, usagef("--%s %q: want a CIDR such as 198.18.0.0/15: %v", flag, v, err)
		}
		a = append(a, p.Masked())
	}
	return a, nil
}

// loadKeys reads --key-file: the current key and, during a rotation, the
// next one.
func loadKeys(path string) (key, next []byte, err error) {
	if path == "" {
		return nil, nil, nil
	}
	if key, next, err = gateway.LoadKeys(path); err != nil {
		return nil, nil, usagef("--key-file: %v", err)
	}
	return key, next, nil
}
