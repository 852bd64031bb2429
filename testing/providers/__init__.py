"""Simulators of hosted providers' APIs, for tests."""
