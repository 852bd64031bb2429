"""Running pods, and the Deployments that own them: scale, roll out a changed template, drain before stopping.

A pod is a set of supervised processes on one loopback address, Ready when every container's readinessProbe
passes. Every change that translation can see (a pod added, Ready or not, terminating, gone) calls `changed`, and
the runner rebuilds. A pod leaves like on a cluster: it turns terminating (out of every endpoint list at once),
and only once the Envoys have that configuration (`drained`) are its processes stopped, so no request is sent to a
process that is going away.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from translators.loader import ObjectKey, Origin, ResourceSet
from translators.resources import Deployment, Pod
from xds_server.up import images, readiness
from xds_server.up.addresses import LoopbackAddresses
from xds_server.up.pods import (
    ContainerPlan,
    DeploymentPlan,
    PodIdentity,
    container_env,
    plan_deployment,
    pod_identity,
    pod_name,
    pod_object,
)
from xds_server.up.processes import Supervised
from xds_server.up.report import Reporter

RUN_ID_ENV = "XDS_SERVER_UP_RUN"  # on every child of a run: how tests (and people) find a run's processes


@dataclass
class RunContext:
    """What every pod of one run shares."""

    run_id: str
    directory: Path
    reporter: Reporter
    rng: random.Random = field(default_factory=random.Random)
    addresses: LoopbackAddresses = field(init=False)

    def __post_init__(self) -> None:
        self.addresses = LoopbackAddresses(self.rng)

    def child_env(self, extra: dict[str, str]) -> dict[str, str]:
        return {**os.environ, "PYTHONUNBUFFERED": "1", RUN_ID_ENV: self.run_id, **extra}


class _Container:
    def __init__(self, pod: RunningPod, plan: ContainerPlan, env: dict[str, str], probe: readiness.Probe) -> None:
        self.pod = pod
        self.name = plan.container.name
        self.probe = probe
        self.ready = False
        self.log = pod.run.directory / f"{pod.identity.name}_{pod.identity.namespace}_{self.name}.log"
        argv = images.command(plan.runtime, plan.container.args, pod.identity.address)
        self.process = Supervised(argv, env, self.log, self._started, self._exited)
        self._watch: asyncio.Task[None] | None = None

    def _started(self, _pid: int) -> None:
        self._watch = asyncio.create_task(readiness.watch(self.probe, self.pod.identity.address, self._set_ready))

    def _exited(self, code: int, restart_in: float) -> None:
        if self._watch is not None:
            self._watch.cancel()
        how = f"was killed by signal {-code}" if code < 0 else f"exited with code {code}"
        self.pod.run.reporter.info(
            f"pod {self.pod.identity.namespace}/{self.pod.identity.name}: {self.name} {how}; restarting in "
            f"{restart_in:.0f}s (restart {self.process.restarts}); log {self.log}"
        )
        self._set_ready(False)

    def _set_ready(self, ready: bool) -> None:
        if ready != self.ready:
            self.ready = ready
            self.pod.readiness_changed()

    async def stop(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
        await self.process.stop()


class RunningPod:
    def __init__(
        self,
        plan: DeploymentPlan,
        identity: PodIdentity,
        resources: ResourceSet,
        run: RunContext,
        changed: Callable[[RunningPod], None],
    ) -> None:
        self.plan = plan
        self.identity = identity
        self.run = run
        self.terminating = False
        self.created = time.monotonic()
        self._since = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        self._changed = changed
        self.containers: list[_Container] = []
        for container_plan in plan.containers:
            container = container_plan.container
            env, problems = container_env(container, identity, resources)
            # On a cluster HOSTNAME is the pod's name; the simulators read POD_NAME for it (x-inference-pod).
            env = run.child_env({"HOSTNAME": identity.name, "POD_NAME": identity.name, **env})
            try:
                probe = readiness.readiness_probe(container.readiness_probe, container.ports)
            except readiness.UnsupportedProbe as unsupported:
                problems.append(f"{unsupported}; ready once it listens")
                probe = readiness.readiness_probe(None, container.ports)
            if container.command:
                problems.append("command is ignored: the simulator for its image runs with the manifest's args")
            for problem in problems:
                run.reporter.warn(f"{plan.key} container {container.name}: {problem}")
            self.containers.append(_Container(self, container_plan, env, probe))

    @property
    def ready(self) -> bool:
        return not self.terminating and all(c.ready for c in self.containers)

    @property
    def logs(self) -> list[Path]:
        return [c.log for c in self.containers]

    def start(self) -> None:
        for container in self.containers:
            container.process.start()

    def readiness_changed(self) -> None:
        self._changed(self)

    def object(self) -> tuple[ObjectKey, Pod, Origin]:
        return pod_object(self.plan, self.identity, self.ready, self.terminating, self._since)

    async def stop(self) -> None:
        await asyncio.gather(*(c.stop() for c in self.containers))


class Workloads:
    """Deployments -> running pods, reconciled on every load of the manifests."""

    def __init__(self, run: RunContext, changed: Callable[[], None], drained: Callable[[], Awaitable[None]]) -> None:
        self.run = run
        self._changed = changed
        self._drained = drained
        self._plans: dict[ObjectKey, DeploymentPlan] = {}
        self._pods: dict[ObjectKey, list[RunningPod]] = {}
        self._stopping: set[asyncio.Task[None]] = set()
        self._names: set[str] = set()
        self._reported: set[tuple[ObjectKey, tuple[str, ...], bool]] = set()
        self.announce = False  # after startup, every pod event is a line (before it, the progress line says it)

    def pods(self) -> list[RunningPod]:
        return [pod for pods in self._pods.values() for pod in pods]

    def pod_objects(self) -> dict[ObjectKey, tuple[Pod, Origin]]:
        objects = {}
        for pod in self.pods():
            key, obj, origin = pod.object()
            objects[key] = (obj, origin)
        return objects

    def reconcile(self, resources: ResourceSet) -> None:
        """Starts and stops pods so each Deployment has its replicas of its current template."""
        seen = set()
        for deployment in resources.of_kind(Deployment):
            plan = plan_deployment(deployment)
            seen.add(plan.key)
            self._report(plan)
            previous = self._plans.get(plan.key)
            if self.announce and previous is not None and previous.replicas != plan.replicas:
                self.run.reporter.info(f"{plan.key}: {previous.replicas} -> {plan.replicas} replicas")
            self._plans[plan.key] = plan
            pods = self._pods.setdefault(plan.key, [])
            current = [p for p in pods if p.plan.template_hash == plan.template_hash and not p.terminating]
            for _ in range(plan.replicas - len(current)):
                pods.append(self._create(plan, resources))
            # Scale down not-ready pods first, then the youngest, as a ReplicaSet does.
            surplus = sorted(current, key=lambda p: (p.ready, -p.created))[: max(0, len(current) - plan.replicas)]
            self._terminate(surplus, "scaled down")
            self._retire_outdated(plan.key)
        for key in set(self._plans) - seen:
            del self._plans[key]
            self._terminate(self._pods.get(key, []), "its Deployment was removed")
        self._changed()

    def _report(self, plan: DeploymentPlan) -> None:
        """Once per Deployment and images: what `up` does with it, when that is not simply running it."""
        marker = (plan.key, plan.unrecognised, plan.picker)
        if marker in self._reported or not (plan.unrecognised or plan.picker):
            return
        self._reported.add(marker)
        if plan.unrecognised:
            self.run.reporter.warn(
                f"{plan.key}: image {', '.join(plan.unrecognised)} has no local stand-in (known: "
                f"{', '.join(images.KNOWN_REPOSITORIES)}), so its pods do not exist"
            )
        else:
            self.run.reporter.info(f"{plan.key}: the Endpoint Picker, embedded in the control plane (no process)")

    def _create(self, plan: DeploymentPlan, resources: ResourceSet) -> RunningPod:
        name = pod_name(plan, self.run.rng)
        while name in self._names:
            name = pod_name(plan, self.run.rng)
        self._names.add(name)
        address = self.run.addresses.allocate([port for c in plan.containers for port in c.ports])
        pod = RunningPod(plan, pod_identity(plan, name, address), resources, self.run, self._pod_changed)
        if self.announce:
            self.run.reporter.info(f"pod {plan.deployment.namespace}/{name}: starting at {address}")
        pod.start()
        return pod

    def _pod_changed(self, pod: RunningPod) -> None:
        if self.announce and not pod.terminating:
            self.run.reporter.info(
                f"pod {pod.identity.namespace}/{pod.identity.name}: {'' if pod.ready else 'not '}ready"
            )
        self._retire_outdated(pod.plan.key)
        self._changed()

    def _retire_outdated(self, key: ObjectKey) -> None:
        """A changed template: the old pods stop once the new ones are all Ready (a surge rollout)."""
        plan = self._plans.get(key)
        if plan is None:
            return
        pods = self._pods.get(key, [])
        fresh = [p for p in pods if p.plan.template_hash == plan.template_hash and p.ready]
        if len(fresh) >= plan.replicas:
            outdated = [p for p in pods if p.plan.template_hash != plan.template_hash and not p.terminating]
            self._terminate(outdated, "its template changed")

    def _terminate(self, pods: Iterable[RunningPod], why: str) -> None:
        for pod in pods:
            if pod.terminating:
                continue
            pod.terminating = True
            if self.announce:
                self.run.reporter.info(f"pod {pod.identity.namespace}/{pod.identity.name}: stopping ({why})")
            task = asyncio.create_task(self._drain_and_stop(pod))
            self._stopping.add(task)
            task.add_done_callback(self._stopping.discard)
        self._changed()

    async def _drain_and_stop(self, pod: RunningPod) -> None:
        self._changed()
        await self._drained()
        await pod.stop()
        pods = self._pods.get(pod.plan.key, [])
        if pod in pods:
            pods.remove(pod)
        if not pods:
            self._pods.pop(pod.plan.key, None)
        self._changed()

    async def stop_all(self) -> None:
        """Shutdown: every process at once, no draining (the Envoys are stopping too)."""
        for task in list(self._stopping):
            task.cancel()
        await asyncio.gather(*(pod.stop() for pod in self.pods()))
