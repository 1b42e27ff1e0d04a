//go:build tools

// GoBGP for vipd's BGP mode: gobgpd (the speaker vipd drives over gRPC,
// with BFD) and gobgp (its CLI, for the lab), at the one version go.mod
// pins. scripts/gobgp.sh builds them; bgp/build.rs generates vipd's gRPC
// client from the .proto files of this same module version.
package tools

import (
	_ "github.com/osrg/gobgp/v4/cmd/gobgp"
	_ "github.com/osrg/gobgp/v4/cmd/gobgpd"
)
