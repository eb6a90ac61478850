//go:build tools

// Package nfpm pins the package builder used by `make package`
// (github.com/goreleaser/nfpm/v2, MIT), in a module of its own so the
// product's go.mod stays lean.
package nfpm

import _ "github.com/goreleaser/nfpm/v2/cmd/nfpm"
