//go:build tools

// Package consul pins the Consul server used by the tests: `make consul`
// builds github.com/hashicorp/consul v1.14.0 (MPL-2.0) from the module proxy
// into bin/consul. It is a module of its own so the product's go.mod stays lean.
package consul

import _ "github.com/hashicorp/consul"
