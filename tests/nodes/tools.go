//go:build tools

// The container runtime of the lab's kubelet nodes: containerd, its runc
// shim and ctr, at the version go.mod pins (Kubernetes 1.36's kubelet needs
// containerd 2; Debian 12 ships 1.6). scripts/nodes.sh builds them.
package tools

import (
	_ "github.com/containerd/containerd/v2/cmd/containerd"
	_ "github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2"
	_ "github.com/containerd/containerd/v2/cmd/ctr"
)
