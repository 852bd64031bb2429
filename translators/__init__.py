"""Pure translation: Kubernetes-style resources -> IR -> Envoy xDS protobufs.

Nothing in this package does I/O apart from reading the files it is asked to load; there is no clock, no
randomness and no network, so the same input gives byte-identical output in any document order.
"""
