//go:build tools

// Package helm pins the helm command the deploy tests render weir's chart with (built by
// scripts/cluster build into target/cluster/bin/).
package helm

import _ "helm.sh/helm/v4/cmd/helm"
