"""Cluster mode: status writer, leader election, provisioning."""
