"""`xds-server up`: a directory of Kubernetes manifests running on one machine, without Kubernetes.

The control plane runs in-process (the same service as `serve`); Deployments whose images are known become local
processes, one per replica, each on its own loopback address; one Envoy runs per Gateway. Modules:

- `images`: which program stands in for a container image;
- `addresses`: the loopback address each pod gets;
- `pods`: Deployment -> pod plans (names, env with fieldRefs, Pod objects for translation), pure;
- `readiness`: readinessProbes (httpGet, grpc, tcpSocket) run against a pod;
- `processes`: supervised child processes (restart with backoff, die with the runner);
- `workloads`: running pods and the Deployments that own them (scale, roll out, drain before stopping);
- `envoys`: one Envoy per Gateway;
- `report`: what the person running it reads (progress, ready lines, status table);
- `publisher`: coalesced rebuilds of the control plane's configuration;
- `runner`: the orchestration.
"""
