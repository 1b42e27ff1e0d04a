//go:build tools

// The node components the lab's kubelet tests run, built from the same
// Kubernetes module as the API server (scripts/harness.sh builds them).
package main

import (
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-proxy"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
	_ "k8s.io/kubernetes/cmd/kubelet"
)
