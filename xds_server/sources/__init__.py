"""Where resources come from: watched files today; a Kubernetes API server later."""
