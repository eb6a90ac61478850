package config

import (
	"net/netip"
	"reflect"
	"slices"
	"time"
)

// Effective renders the configuration for people: durations and addresses
// as the strings one writes in the file, the token hidden. The result
// marshals to JSON.
func (c *Config) Effective() any {
	cc := *c
	if cc.Consul.Token != "" {
		cc.Consul.Token = "(set)"
	}
	return render(reflect.ValueOf(cc))
}

var (
	durationType = reflect.TypeOf(time.Duration(0))
	stringerType = reflect.TypeOf((*interface{ String() string })(nil)).Elem()
	addrPortType = reflect.TypeOf(netip.AddrPort{})
	bytesType    = reflect.TypeOf([]byte(nil))
)

func render(v reflect.Value) any {
	switch {
	case v.Type() == durationType:
		return time.Duration(v.Int()).String()
	case v.Type() == addrPortType && !v.Interface().(netip.AddrPort).IsValid():
		return ""
	case v.Kind() != reflect.Struct && v.Type().Implements(stringerType):
		return v.Interface().(interface{ String() string }).String()
	case v.Kind() == reflect.Struct && v.Type().PkgPath() == "net/netip":
		return v.Interface().(interface{ String() string }).String()
	}
	switch v.Kind() {
	case reflect.Struct:
		m := map[string]any{}
		for i := range v.NumField() {
			f := v.Type().Field(i)
			// Keys and deliverers are loaded and opened by the agent,
			// never part of the file.
			if !f.IsExported() || f.Type == bytesType || f.Type.Kind() == reflect.Interface {
				continue
			}
			if f.Anonymous {
				if sub, ok := render(v.Field(i)).(map[string]any); ok {
					for k, x := range sub {
						m[k] = x
					}
					continue
				}
			}
			m[f.Name] = render(v.Field(i))
		}
		return m
	case reflect.Slice:
		out := make([]any, v.Len())
		for i := range out {
			out[i] = render(v.Index(i))
		}
		return out
	case reflect.Map:
		m := map[string]any{}
		for _, k := range v.MapKeys() {
			m[k.String()] = render(v.MapIndex(k))
		}
		return m
	}
	return v.Interface()
}

// Changed lists what differs between two configurations, as the names of
// the sections of the effective configuration (Effective): "Hooks",
// "Checks", "Election" …, and for Relay, Receive, Log and Metrics their
// fields ("Relay.Allow", "Log.Level"), which a reload may apply apart.
func Changed(old, new *Config) []string {
	a, _ := old.Effective().(map[string]any)
	b, _ := new.Effective().(map[string]any)
	var out []string
	for _, k := range sortedKeys(a, b) {
		if reflect.DeepEqual(a[k], b[k]) {
			continue
		}
		sa, oka := a[k].(map[string]any)
		sb, okb := b[k].(map[string]any)
		if !oka || !okb || (k != "Relay" && k != "Receive" && k != "Egress" && k != "Log" && k != "Metrics") {
			out = append(out, k)
			continue
		}
		for _, f := range sortedKeys(sa, sb) {
			if !reflect.DeepEqual(sa[f], sb[f]) {
				out = append(out, k+"."+f)
			}
		}
	}
	return out
}

func sortedKeys(ms ...map[string]any) []string {
	var ks []string
	for _, m := range ms {
		for k := range m {
			if !slices.Contains(ks, k) {
				ks = append(ks, k)
			}
		}
	}
	slices.Sort(ks)
	return ks
}
