module driftgate

go 1.26.8

require github.com/google/go-cmp v0.7.0

require (
	golang.org/x/net v0.62.0 // indirect
	golang.org/x/sync v0.25.0 // indirect
	golang.org/x/sys v0.50.0 // indirect
)
