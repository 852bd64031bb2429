"""One pod on the local node, from binding to deletion: its network namespace, its volumes, its environment, its
containers, and the status the API shows for it.

Every process of the pod runs as `ip netns exec <pod netns> unshare --uts -- sh -c <setup> sh <argv>`: the pod's
own network (address, loopback, port space; `ip netns exec` also mounts /etc/netns/<netns>/resolv.conf and hosts
over /etc, which is how the pod gets the cluster DNS), its own hostname, and a private mount namespace in which the
setup binds each volume at its mountPath and gives the pod its own /dev/shm (two Envoys would otherwise share their
hot-restart memory). Mount points missing on this machine are created on the host (empty) and removed when the node
stops. Processes run as root: the machines' Python lives under a 0700 home, so `runAsUser` is not honoured.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import shlex
import shutil
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from testing.localnode import images
from testing.localnode.cache import CONFIG_MAP, SECRET, SERVICE
from testing.localnode.containers import Container, RestartPolicy, UnsupportedProbe, now
from testing.localnode.dns import resolv_conf
from testing.localnode.volumes import (
    HostPath,
    UnsupportedVolume,
    VolumeNotReady,
    decoded,
    digest,
    field_value,
    render,
    resource_value,
    write_atomically,
)
from xds_server.kube.api import call

if TYPE_CHECKING:
    from testing.localnode.node import LocalNode

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parent.parent.parent  # the repository: the project runs from it (editable install)

_REFERENCE = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")
VOLUME_RETRY_SECONDS = 1.0
STATUS_COALESCE_SECONDS = 0.05


def _covered(path: Path, targets: list[Path]) -> bool:
    return any(path.is_relative_to(target) for target in targets)


def expand(text: str, env: Mapping[str, str]) -> str:
    """Kubernetes' $(VAR) expansion: a defined variable is replaced, an undefined reference stays, `$$` is `$`."""

    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group(1)
        return env[name] if name in env else match.group(0)

    return _REFERENCE.sub(replace, text)


def _env_name(service: str) -> str:
    return service.upper().replace("-", "_")


def service_links(services: list[dict[str, Any]]) -> dict[str, str]:
    """The Docker-links-style variables every container gets for the Services of its namespace (and `kubernetes`)."""
    env: dict[str, str] = {}
    for service in services:
        spec = service.get("spec") or {}
        ip = spec.get("clusterIP")
        ports = spec.get("ports") or []
        if not ip or ip == "None" or not ports:
            continue
        name = _env_name(str(service["metadata"]["name"]))
        first = ports[0]
        env[f"{name}_SERVICE_HOST"] = ip
        env[f"{name}_SERVICE_PORT"] = str(first["port"])
        env[f"{name}_PORT"] = f"{str(first.get('protocol', 'TCP')).lower()}://{ip}:{first['port']}"
        for port in ports:
            protocol = str(port.get("protocol", "TCP"))
            if port.get("name"):
                env[f"{name}_SERVICE_PORT_{_env_name(str(port['name']))}"] = str(port["port"])
            prefix = f"{name}_PORT_{port['port']}_{protocol}"
            env[prefix] = f"{protocol.lower()}://{ip}:{port['port']}"
            env[f"{prefix}_PROTO"] = protocol.lower()
            env[f"{prefix}_PORT"] = str(port["port"])
            env[f"{prefix}_ADDR"] = ip
    return env


class PodWorker:
    def __init__(self, node: LocalNode, pod: dict[str, Any]) -> None:
        self.node = node
        self.pod = pod
        meta = pod["metadata"]
        self.uid = str(meta["uid"])
        self.namespace = str(meta["namespace"])
        self.name = str(meta["name"])
        self.directory = node.workdir / "pods" / f"{self.namespace}_{self.name}_{self.uid[:8]}"
        self.ip = ""
        self.netns = ""
        self.containers: list[Container] = []
        self.init_done = False
        self.waiting_reason: tuple[str, str] | None = None  # before the containers exist: why the pod waits
        self._volume_digests: dict[str, str] = {}
        self._dirs: dict[str, Path] = {}  # volume name -> its directory on this machine
        self._tokens: dict[tuple[str, int], tuple[str, float]] = {}
        self._conditions: dict[str, tuple[str, str]] = {}  # type -> (status, lastTransitionTime)
        self._status_dirty = asyncio.Event()
        self._volumes_changed = asyncio.Event()
        self._terminate: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        self._task: asyncio.Task[None] | None = None
        self._status_task: asyncio.Task[None] | None = None
        self._started_at = now()

    def __str__(self) -> str:
        return f"pod {self.namespace}/{self.name}"

    # --- what the node calls ---

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=str(self))
        self._status_task = asyncio.create_task(self._write_status(), name=f"{self} status")

    def updated(self, pod: dict[str, Any]) -> None:
        self.pod = pod
        if pod["metadata"].get("deletionTimestamp"):
            self.terminate(float(pod["metadata"].get("deletionGracePeriodSeconds", 30)))

    def volumes_changed(self) -> None:
        self._volumes_changed.set()

    def terminate(self, grace_seconds: float) -> None:
        if not self._terminate.done():
            self._terminate.set_result(grace_seconds)

    async def wait(self) -> None:
        if self._task is not None:
            await asyncio.shield(self._task)

    # --- the pod's life ---

    async def _run(self) -> None:
        try:
            await self._live()
        except Exception:
            log.exception("%s: failed", self)
        grace = await self._terminate
        await asyncio.gather(*(c.stop(grace, self._run_hook) for c in self.containers))
        self._mark_dirty()
        if self._status_task is not None:
            self._status_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._status_task
        if self.pod["metadata"].get("deletionTimestamp"):
            with contextlib.suppress(Exception):
                await self._send_status()
            await self._confirm_deletion()
        await asyncio.to_thread(self.node.network.remove_pod, self.uid)  # `ip` calls: off the node's event loop
        if self.netns:
            shutil.rmtree(Path("/etc/netns") / self.netns, ignore_errors=True)

    async def _live(self) -> None:
        network = await asyncio.to_thread(self.node.network.add_pod, self.uid)
        self.ip, self.netns = network.ip, network.netns
        self._write_netns_files()
        self._set_condition("PodScheduled", True)
        self._set_condition("PodReadyToStartContainers", True)
        self._mark_dirty()
        spec = self.pod.get("spec") or {}
        try:
            await self._mount_volumes(spec)
            init = [self._container(c, spec, RestartPolicy.ON_FAILURE) for c in spec.get("initContainers") or []]
            policy = RestartPolicy(spec.get("restartPolicy") or "Always")
            main = [self._container(c, spec, policy) for c in spec.get("containers") or []]
        except (images.UnknownImage, UnsupportedVolume, UnsupportedProbe) as error:
            reason = "ErrImagePull" if isinstance(error, images.UnknownImage) else "CreateContainerConfigError"
            await self._wait_with(reason, str(error))
            return
        for container in init:  # one after the other, each to success
            self.containers = [container]
            container.start()
            await container.wait()
            if container.exit_code != 0:
                await self._wait_with("InitContainerFailed", f"init container {container.name} failed")
                return
        self.init_done = True
        self._set_condition("Initialized", True)
        self.containers = main
        self.waiting_reason = None
        for container in main:
            container.start()
        self._mark_dirty()
        refresh = asyncio.create_task(self._refresh_volumes(spec))
        await asyncio.shield(self._terminate)
        refresh.cancel()

    async def _wait_with(self, reason: str, message: str) -> None:
        self.waiting_reason = (reason, message)
        await self.node.event(self.pod, "Warning", "Failed", message)
        self._mark_dirty()

    # --- environment and processes ---

    def _env(self, container: Mapping[str, Any], spec: Mapping[str, Any]) -> dict[str, str]:
        cache = self.node.cache
        env = {"PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"), "HOME": "/root", "HOSTNAME": self.name}
        kubernetes = cache.get(SERVICE, "default", "kubernetes")
        services = [] if kubernetes is None else [kubernetes]
        if spec.get("enableServiceLinks", True):
            services += [s for s in cache.items(SERVICE) if s["metadata"].get("namespace") == self.namespace]
        env |= service_links(services)
        for source in container.get("envFrom") or []:
            prefix = str(source.get("prefix") or "")
            ref = source.get("configMapRef") or source.get("secretRef") or {}
            kind = CONFIG_MAP if "configMapRef" in source else SECRET
            found = cache.get(kind, self.namespace, str(ref.get("name")))
            if found is None:
                if ref.get("optional"):
                    continue
                raise UnsupportedVolume(f'{kind.kind} "{ref.get("name")}" for envFrom not found')
            env |= {prefix + k: v.decode() for k, v in decoded(found, kind is SECRET).items()}
        for variable in container.get("env") or []:
            name = str(variable["name"])
            if "value" in variable:
                env[name] = expand(str(variable["value"]), env)
                continue
            source = variable.get("valueFrom") or {}
            if "fieldRef" in source:
                env[name] = field_value(self._with_ips(), str(source["fieldRef"]["fieldPath"]))
            elif "resourceFieldRef" in source:
                ref = source["resourceFieldRef"]
                env[name] = resource_value(
                    self.pod, ref.get("containerName") or container.get("name"), ref["resource"], self.node.allocatable
                )
            else:
                secret = "secretKeyRef" in source
                ref = source.get("secretKeyRef") or source.get("configMapKeyRef") or {}
                found = cache.get(SECRET if secret else CONFIG_MAP, self.namespace, str(ref.get("name")))
                values = decoded(found, secret) if found is not None else {}
                if str(ref.get("key")) in values:
                    env[name] = values[str(ref["key"])].decode()
                elif not ref.get("optional"):
                    raise UnsupportedVolume(f'env {name}: key "{ref.get("key")}" of "{ref.get("name")}" not found')
        return env

    def _with_ips(self) -> dict[str, Any]:
        status = {"podIP": self.ip, "podIPs": [{"ip": self.ip}], "hostIP": self.node.network.node_ip}
        status["hostIPs"] = [{"ip": self.node.network.node_ip}]
        return {**self.pod, "status": {**(self.pod.get("status") or {}), **status}}

    def _container(self, container: Mapping[str, Any], spec: Mapping[str, Any], policy: RestartPolicy) -> Container:
        image = str(container.get("image") or "")
        env = self._env(container, spec)
        command = [expand(str(part), env) for part in container.get("command") or []]
        args = [expand(str(part), env) for part in container.get("args") or []]
        program = images.argv(image, command, args)
        setup = ["mount -t tmpfs -o mode=1777,size=256m shm /dev/shm", f"hostname {shlex.quote(self.name)}"]
        mounts = container.get("volumeMounts") or []
        # The volumes are first bound to a staging path no mountPath covers: an emptyDir mounted at /tmp would
        # otherwise hide every volume of a node whose work dir is under /tmp. Then parents before children, as
        # container runtimes order mounts.
        staging = self._staging([Path(str(m["mountPath"])) for m in mounts])
        self.node.mount_points.ensure(staging, directory=True)
        setup.append(f"mount --bind {shlex.quote(str(self.directory / 'volumes'))} {shlex.quote(str(staging))}")
        targets = [Path(str(m["mountPath"])) for m in mounts]
        kept_paths = [p for p in sorted({ROOT, Path(sys.prefix), Path(sys.base_prefix)}) if _covered(p, targets)]
        kept = self._keep_visible(kept_paths, staging, setup)
        if not any(Path(program[0]).is_relative_to(path) for path in kept_paths):  # a virtualenv's python stays put
            program = self._stage_program(program, targets, staging, setup)
        read_only = []
        for mount in sorted(mounts, key=lambda m: len(Path(str(m["mountPath"])).parts)):
            setup.append(self._bind(mount, staging))
            if mount.get("readOnly"):
                read_only.append(f"mount -o remount,bind,ro {shlex.quote(str(mount['mountPath']))}")
        setup += kept + read_only
        if container.get("workingDir"):
            setup.append(f"cd {shlex.quote(str(container['workingDir']))}")
        script = " && ".join(setup) + ' && exec "$@"'
        argv = ["ip", "netns", "exec", self.netns, "unshare", "--uts", "--", "sh", "-c", script, "sh", *program]
        log_file = self.directory / f"{container['name']}.log"
        return Container(container, f"local://{image}", argv, env, log_file, self.ip, policy, self._mark_dirty)

    def _stage_program(self, program: list[str], targets: list[Path], staging: Path, setup: list[str]) -> list[str]:
        """A program a mountPath would hide (coredns' ConfigMap goes to /root, where this machine keeps the built
        binaries) is bound into the staging directory first and run from there."""
        executable = Path(program[0])
        if not _covered(executable, targets):
            return program
        placeholder = self.directory / "volumes" / ".programs" / executable.name
        placeholder.parent.mkdir(parents=True, exist_ok=True)
        placeholder.touch()
        staged = staging / ".programs" / executable.name
        setup.append(f"mount --bind {shlex.quote(str(executable))} {shlex.quote(str(staged))}")
        return [str(staged), *program[1:]]

    def _keep_visible(self, paths: list[Path], staging: Path, setup: list[str]) -> list[str]:
        """What Python programs need from this machine (the repository, the virtualenv, the interpreter's prefix)
        stays visible under a mountPath that covers it (the chart's emptyDir at /tmp, when the repository is under
        /tmp): bound aside before the volumes, bound back over them after. Returns the commands for after."""
        after = []
        for n, path in enumerate(paths):
            placeholder = self.directory / "volumes" / ".kept" / str(n)
            placeholder.mkdir(parents=True, exist_ok=True)
            aside = shlex.quote(str(staging / ".kept" / str(n)))
            setup.append(f"mount --bind {shlex.quote(str(path))} {aside}")
            after.append(f"mkdir -p {shlex.quote(str(path))} && mount --bind {aside} {shlex.quote(str(path))}")
        return after

    def _staging(self, targets: list[Path]) -> Path:
        for root in (Path("/run/xds-localnode"), Path("/var/lib/xds-localnode"), Path("/dev/xds-localnode")):
            staging = root / self.netns
            if not any(staging.is_relative_to(target) for target in targets):
                return staging
        raise UnsupportedVolume(f"the volumeMounts {sorted(map(str, targets))} leave no place to stage volumes")

    def _bind(self, mount: Mapping[str, Any], staging: Path) -> str:
        volume_dir = self._dirs.get(str(mount["name"]))
        if volume_dir is None:
            raise UnsupportedVolume(f"volumeMount {mount['name']!r} names no volume of the pod")
        source = volume_dir
        if mount.get("subPath"):
            source = (volume_dir / str(mount["subPath"])).resolve()
        target = Path(str(mount["mountPath"]))
        self.node.mount_points.ensure(target, directory=source.is_dir())
        volumes = (self.directory / "volumes").resolve()
        if source.resolve().is_relative_to(volumes):  # hostPath volumes are bound from where they are
            source = staging / source.resolve().relative_to(volumes)
        return f"mount --bind {shlex.quote(str(source))} {shlex.quote(str(target))}"

    async def _run_hook(self, hook: Mapping[str, Any]) -> None:
        """A preStop/postStart handler: httpGet against the pod, exec in the pod's namespaces."""
        if "httpGet" in hook:
            get = hook["httpGet"]
            host, port = get.get("host") or self.ip, get.get("port")
            with contextlib.suppress(OSError):
                reader, writer = await asyncio.open_connection(host, int(port))
                writer.write(
                    f"GET {get.get('path', '/')} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode()
                )
                await writer.drain()
                await reader.read()
                writer.close()
        elif "exec" in hook:
            command = ["ip", "netns", "exec", self.netns, *hook["exec"].get("command", [])]
            process = await asyncio.create_subprocess_exec(*command)
            await process.wait()
        elif "sleep" in hook:
            await asyncio.sleep(float(hook["sleep"].get("seconds", 0)))

    def _write_netns_files(self) -> None:
        etc = Path("/etc/netns") / self.netns
        etc.mkdir(parents=True, exist_ok=True)
        (etc / "resolv.conf").write_text(resolv_conf(self.node.network, self.namespace))
        hostname = self.pod.get("spec", {}).get("hostname") or self.name
        (etc / "hosts").write_text(f"127.0.0.1\tlocalhost\n::1\tlocalhost\n{self.ip}\t{hostname}\n")

    # --- volumes ---

    async def _token(self, audience: str, seconds: int) -> str:
        """A service-account token bound to this pod (TokenRequest), renewed once 80% of its life is gone."""
        loop = asyncio.get_running_loop()
        cached = self._tokens.get((audience, seconds))
        if cached is not None and loop.time() < cached[1]:
            return cached[0]
        account = (self.pod.get("spec") or {}).get("serviceAccountName") or "default"
        body = {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "spec": {
                "audiences": [audience] if audience else [],
                "expirationSeconds": max(seconds, 600),
                "boundObjectRef": {"apiVersion": "v1", "kind": "Pod", "name": self.name, "uid": self.uid},
            },
        }
        path = f"/api/v1/namespaces/{self.namespace}/serviceaccounts/{account}/token"
        answer = await call(self.node.api, "POST", path, body=body)
        token = str(answer["status"]["token"])
        self._tokens[(audience, seconds)] = (token, loop.time() + 0.8 * max(seconds, 600))
        return token

    async def _render_all(self, spec: Mapping[str, Any]) -> None:
        """Writes every volume whose content changed; raises when one cannot be rendered."""
        dirs: dict[str, Path] = {}
        for volume in spec.get("volumes") or []:
            name = str(volume["name"])
            rendered = await render(volume, self._with_ips(), self.node.cache, self._token, self.node.allocatable)
            if isinstance(rendered, HostPath):
                dirs[name] = Path(rendered.path)
                continue
            directory = self.directory / "volumes" / name
            dirs[name] = directory
            if rendered is None:
                directory.mkdir(parents=True, exist_ok=True)
                continue
            fingerprint = digest(rendered)
            if self._volume_digests.get(name) != fingerprint:
                write_atomically(directory, rendered)
                self._volume_digests[name] = fingerprint
        self._dirs = dirs

    async def _mount_volumes(self, spec: Mapping[str, Any]) -> None:
        """Waits until every volume can be rendered (a missing ConfigMap or Secret may come), saying why meanwhile."""
        reported = ""
        while True:
            try:
                await self._render_all(spec)
                return
            except VolumeNotReady as missing:
                message = f"MountVolume.SetUp failed: {missing}"
                if message != reported:
                    reported = message
                    self.waiting_reason = ("ContainerCreating", message)
                    await self.node.event(self.pod, "Warning", "FailedMount", message)
                    self._mark_dirty()
            self._volumes_changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._volumes_changed.wait(), VOLUME_RETRY_SECONDS)

    async def _refresh_volumes(self, spec: Mapping[str, Any]) -> None:
        """Updated ConfigMaps and Secrets reach the files (as the kubelet's sync does); tokens are renewed."""
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._volumes_changed.wait(), 30)
            self._volumes_changed.clear()
            try:
                await self._render_all(spec)
            except (VolumeNotReady, UnsupportedVolume) as error:
                log.warning("%s: volumes not updated: %s", self, error)
            except Exception:
                log.exception("%s: volume refresh failed", self)

    # --- status ---

    def _mark_dirty(self) -> None:
        self._status_dirty.set()

    def _set_condition(self, kind: str, value: bool) -> None:
        status = "True" if value else "False"
        old = self._conditions.get(kind)
        if old is None or old[0] != status:
            self._conditions[kind] = (status, now())

    def _phase(self) -> str:
        if not self.init_done or not self.containers:
            return "Pending"
        if all(c.finished for c in self.containers):
            return "Succeeded" if all(c.exit_code == 0 for c in self.containers) else "Failed"
        return "Running"

    def status(self) -> dict[str, Any]:
        main = self.init_done
        ready = main and bool(self.containers) and all(c.ready for c in self.containers)
        self._set_condition("Initialized", main)
        self._set_condition("ContainersReady", ready)
        self._set_condition("Ready", ready)
        conditions = [
            {"type": kind, "status": status, "lastTransitionTime": when, "lastProbeTime": None}
            for kind, (status, when) in self._conditions.items()
        ]
        statuses = [c.status() for c in self.containers] if main else []
        if not main and self.waiting_reason is not None:
            reason, message = self.waiting_reason
            spec = self.pod.get("spec") or {}
            statuses = [
                {
                    "name": c["name"],
                    "image": c.get("image", ""),
                    "imageID": "",
                    "ready": False,
                    "started": False,
                    "restartCount": 0,
                    "state": {"waiting": {"reason": reason, "message": message}},
                }
                for c in spec.get("containers") or []
            ]
        status: dict[str, Any] = {
            "phase": self._phase(),
            "conditions": conditions,
            "hostIP": self.node.network.node_ip,
            "hostIPs": [{"ip": self.node.network.node_ip}],
            "startTime": self._started_at,
            "containerStatuses": statuses,
        }
        if self.ip:
            status |= {"podIP": self.ip, "podIPs": [{"ip": self.ip}]}
        if main and self.pod.get("spec", {}).get("initContainers"):
            status["initContainerStatuses"] = []
        return status

    async def _send_status(self) -> None:
        path = f"/api/v1/namespaces/{self.namespace}/pods/{self.name}/status"
        body = {"metadata": {"uid": self.uid}, "status": self.status()}
        await call(self.node.api, "PATCH", path, body=body, content_type="application/merge-patch+json")

    async def _write_status(self) -> None:
        while True:
            await self._status_dirty.wait()
            await asyncio.sleep(STATUS_COALESCE_SECONDS)
            self._status_dirty.clear()
            try:
                await self._send_status()
            except Exception as error:  # the pod may be gone; a later change retries
                log.debug("%s: status not written: %s", self, error)
                if "404" not in str(error) and "Not Found" not in str(error):
                    await asyncio.sleep(1)
                    self._status_dirty.set()

    async def _confirm_deletion(self) -> None:
        """What the kubelet does once the containers are gone: the final delete, for this pod's UID only."""
        path = f"/api/v1/namespaces/{self.namespace}/pods/{self.name}"
        body = {
            "kind": "DeleteOptions",
            "apiVersion": "v1",
            "gracePeriodSeconds": 0,
            "preconditions": {"uid": self.uid},
        }
        with contextlib.suppress(Exception):
            await call(self.node.api, "DELETE", path, body=body)
