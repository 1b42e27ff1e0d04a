//go:build tools

// Helm, to lint and render vipd's chart (charts/vipd) in the tests, at the
// version go.mod pins. scripts/helm.sh builds it.
package tools

import (
	_ "helm.sh/helm/v3/cmd/helm"
)
