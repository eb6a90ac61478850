package consul

import (
	"fmt"

	"github.com/hashicorp/consul/api"
)

// ClientConfig is how to reach the local Consul agent.
type ClientConfig struct {
	Address    string // host:port of the agent's HTTP API
	Token      string
	Datacenter string
	// CAFile, CertFile and KeyFile switch to HTTPS (CertFile and KeyFile
	// together, for client certificates).
	CAFile, CertFile, KeyFile string
}

// NewClient builds an API client for the local agent; it fails only on a
// TLS setting it cannot load.
func NewClient(cfg ClientConfig) (*api.Client, error) {
	ac := api.DefaultConfig()
	ac.Address = cfg.Address
	ac.Token = cfg.Token
	ac.Datacenter = cfg.Datacenter
	if cfg.CAFile != "" || cfg.CertFile != "" {
		ac.Scheme = "https"
		ac.TLSConfig = api.TLSConfig{CAFile: cfg.CAFile, CertFile: cfg.CertFile, KeyFile: cfg.KeyFile}
	}
	c, err := api.NewClient(ac)
	if err != nil {
		return nil, fmt.Errorf("consul client for %s: %w", cfg.Address, err)
	}
	return c, nil
}
