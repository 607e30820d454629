// The Gateway API conformance suite (sigs.k8s.io/gateway-api/conformance) run against weir.
// scripts/conformance starts the cluster and weir, then runs this with the suite's flags.
package conformance

import (
	"testing"

	"sigs.k8s.io/gateway-api/conformance"
)

func TestConformance(t *testing.T) {
	conformance.RunConformance(t)
}
