// The Gateway API Inference Extension conformance suite (package conformance of
// sigs.k8s.io/gateway-api-inference-extension, pinned by go.mod), compiled by ../../build.sh with `go test -c` into
// one binary that ../../run.py runs against a cluster. Every option is a flag of the Gateway API conformance
// framework it is built on (sigs.k8s.io/gateway-api/conformance/utils/flags at the version go.mod resolves),
// parsed by the testing package; this file adds only --list-tests, which prints the suite's tests as JSON instead
// of running them (no cluster needed).
package inferenceextension_test

import (
	"encoding/json"
	"flag"
	"os"
	"slices"
	"testing"

	"sigs.k8s.io/gateway-api/pkg/features"

	"sigs.k8s.io/gateway-api-inference-extension/conformance"
	"sigs.k8s.io/gateway-api-inference-extension/conformance/tests"
)

var listTests = flag.Bool("list-tests", false,
	"print the suite's tests (name, features, manifests) as JSON lines on stdout instead of running them")

// TestConformance runs the upstream suite exactly as its own conformance_test.go does.
func TestConformance(t *testing.T) {
	if *listTests {
		t.Skip("--list-tests: not running the suite")
	}
	conformance.RunConformance(t)
}

// testEntry is one line of --list-tests.
type testEntry struct {
	Name        string                 `json:"name"`
	Description string                 `json:"description"`
	Features    []features.FeatureName `json:"features"`
	Manifests   []string               `json:"manifests"`
	Provisional bool                   `json:"provisional,omitempty"`
	// Core: every feature of the test is a core feature of the suite's only profile ("Gateway"), which the suite
	// always enables, so the test runs unless skipped or exempted.
	Core bool `json:"core"`
}

func TestListTests(t *testing.T) {
	if !*listTests {
		t.Skip("only with --list-tests")
	}
	encoder := json.NewEncoder(os.Stdout)
	for _, test := range tests.ConformanceTests {
		entry := testEntry{
			Name:        test.ShortName,
			Description: test.Description,
			Manifests:   test.Manifests,
			Provisional: test.Provisional,
			Core:        conformance.GatewayLayerProfile.CoreFeatures.HasAll(test.Features...),
		}
		// A sorted copy: the upstream slice is shared with the test definition.
		entry.Features = slices.Sorted(slices.Values(test.Features))
		if entry.Features == nil {
			entry.Features = []features.FeatureName{}
		}
		if err := encoder.Encode(entry); err != nil {
			t.Fatal(err)
		}
	}
}
