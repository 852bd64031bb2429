// The Gateway API conformance suite (sigs.k8s.io/gateway-api/conformance, pinned by go.mod), compiled by
// ../../build.sh with `go test -c` into one binary that ../../run.py runs against a cluster. Every option is a
// flag of the upstream suite (sigs.k8s.io/gateway-api/conformance/utils/flags: --gateway-class,
// --conformance-profiles, --report-output, ...), parsed by the testing package; this file adds only
// --list-tests, which prints the suite's tests as JSON instead of running them (no cluster needed).
package gatewayapi_test

import (
	"encoding/json"
	"flag"
	"os"
	"slices"
	"testing"

	"sigs.k8s.io/gateway-api/conformance"
	"sigs.k8s.io/gateway-api/conformance/tests"
	"sigs.k8s.io/gateway-api/conformance/utils/suite"
	"sigs.k8s.io/gateway-api/pkg/features"
)

var listTests = flag.Bool("list-tests", false,
	"print the suite's tests (name, features, manifests, profiles) as JSON lines on stdout instead of running them")

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
	Slow        bool                   `json:"slow,omitempty"`
	// Parallel tests are reported as passed by v1.6.1 whatever their outcome (kubernetes-sigs/gateway-api#5142).
	Parallel bool `json:"parallel,omitempty"`
	// CoreProfiles: the profiles whose core features alone select the test (it runs with no --supported-features).
	CoreProfiles []suite.ConformanceProfileName `json:"coreProfiles"`
	// Profiles: the profiles the test is reported under (its features are core or extended there).
	Profiles []suite.ConformanceProfileName `json:"profiles"`
}

func TestListTests(t *testing.T) {
	if !*listTests {
		t.Skip("only with --list-tests")
	}
	profiles := []suite.ConformanceProfile{
		suite.GatewayHTTPConformanceProfile,
		suite.GatewayTLSConformanceProfile,
		suite.GatewayTCPConformanceProfile,
		suite.GatewayUDPConformanceProfile,
		suite.GatewayGRPCConformanceProfile,
		suite.MeshHTTPConformanceProfile,
		suite.MeshGRPCConformanceProfile,
	}
	encoder := json.NewEncoder(os.Stdout)
	for _, test := range tests.ConformanceTests {
		entry := testEntry{
			Name:         test.ShortName,
			Description:  test.Description,
			Manifests:    test.Manifests,
			Provisional:  test.Provisional,
			Slow:         test.Slow,
			Parallel:     test.Parallel,
			CoreProfiles: []suite.ConformanceProfileName{},
			Profiles:     []suite.ConformanceProfileName{},
		}
		for _, profile := range profiles {
			core, reported := true, true
			for _, feature := range test.Features {
				if !profile.CoreFeatures.Has(feature) {
					core = false
					if !profile.ExtendedFeatures.Has(feature) {
						reported = false
					}
				}
			}
			if core {
				entry.CoreProfiles = append(entry.CoreProfiles, profile.Name)
			}
			if reported {
				entry.Profiles = append(entry.Profiles, profile.Name)
			}
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
