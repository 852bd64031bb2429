"""Test support shared by tests/, e2e/ and bench/: process harness, free ports, manifests, golden cases, hand-built
xDS fixtures. Nothing in the product imports it."""
