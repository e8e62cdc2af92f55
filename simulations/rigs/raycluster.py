"""Simulations on a Ray cluster: how the driver joins Ray (setting `ray-address`), the check that every Ray node
sees the run's files, and a loopback cluster of separate raylets (`ray start`) for the test and the benchmark.

Flower's simulation engine runs every SuperNode's messages on a pool of Ray actors (flwr.simulation.ray_transport):
one actor per `client_resources["num_cpus"]` CPUs of every alive Ray node, so joining a cluster spreads the
shards' work over all its nodes. Any actor may serve any shard in any round, which is why the dataset (and the
run directory, where simulated devices keep theta_u) must be on a path every Ray node sees.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from common.errors import FedctxError

__all__ = ["RayClusterError", "ray_init_args", "worker_env", "check_shared_paths", "alive_nodes", "LoopbackRay",
           "actor_nodes"]

RAY = Path(sys.executable).parent / "ray"  # the venv's `ray` command (same Ray as the driver's)

#: environment variables the Ray workers need from the driver. A local Ray started by the driver passes them on
#: by inheritance; the workers of a cluster started with `ray start` inherit that shell's environment instead.
WORKER_ENV = ("FEDCTX_NODE_THREADS", "FEDCTX_CACHE", "TF_CPP_MIN_LOG_LEVEL")


class RayClusterError(FedctxError, RuntimeError):
    """The Ray cluster named by ray-address cannot be joined, or one of its nodes cannot see the run's files."""


def worker_env() -> dict[str, str]:
    """runtime_env env_vars of every Ray worker: the driver's sys.path (the project and its venv, which must be at
    the same path on every machine) and the WORKER_ENV variables the driver has. FEDCTX_CACHE is made absolute
    (the cache of data=synthetic must be a shared path as well)."""
    from common.data.datasets import cache_dir

    env = {"PYTHONPATH": ":".join(sys.path), "FEDCTX_CACHE": str(cache_dir().resolve())}
    env.update({k: os.environ[k] for k in WORKER_ENV if k in os.environ and k != "FEDCTX_CACHE"})
    return env


def ray_init_args(address: str, cpus: int, verbose: bool) -> dict:
    """Keyword arguments of ray.init: a new local Ray of `cpus` CPUs when `address` is "" (the default; also when
    RAY_ADDRESS is set or a `ray start` cluster runs on this machine), else a connection to the cluster at
    `address` ("host:port" of its head's GCS, or "auto"), whose CPUs are those of its `ray start` commands."""
    common = {"logging_level": "error", "log_to_driver": verbose, "runtime_env": {"env_vars": worker_env()}}
    if not address:
        return {"address": "local", "num_cpus": cpus, "include_dashboard": False, **common}
    return {"address": address, **common}


def connect(address: str, cpus: int, verbose: bool) -> None:
    """ray.init for a simulation (see ray_init_args); a cluster that cannot be joined is a RayClusterError (a
    "host:port" that nothing listens on fails in seconds, not after Ray's own minutes of retries)."""
    import ray

    fix = (f"Fix: start the cluster's head with `ray start --head --port=6379` (and the other machines with `ray "
           f"start --address=<head-host>:6379`) and pass ray-address=<head-host>:6379, or leave ray-address empty "
           f"for a local Ray on this machine.")
    host, _, port = address.rpartition(":")
    if address and "://" not in address and port.isdigit():
        try:
            socket.create_connection((host or "127.0.0.1", int(port)), timeout=10).close()
        except OSError as err:
            raise RayClusterError(f"ray-address: nothing answers at {address} ({err.strerror or err}). {fix}") from None
    try:
        ray.init(**ray_init_args(address, cpus, verbose))
    except (ConnectionError, RuntimeError, ValueError) as err:
        why = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise RayClusterError(f"ray-address: cannot join the Ray cluster at {address!r}: {why}. {fix}") from None


def alive_nodes() -> list[dict]:
    """The alive Ray nodes that have CPUs (those that host actors): [{"NodeID", "NodeManagerAddress", "CPU"}]."""
    import ray

    return [{"NodeID": n["NodeID"], "NodeManagerAddress": n["NodeManagerAddress"], "CPU": n["Resources"]["CPU"]}
            for n in ray.nodes() if n.get("Alive") and n.get("Resources", {}).get("CPU", 0) > 0]


def _digest(path: str) -> str:
    """sha256 of a file, or of a directory's files (names, sizes and bytes, hidden files left out); "" if
    missing."""
    p = Path(path)
    if not p.exists():
        return ""
    files = [p] if p.is_file() else sorted(f for f in p.rglob("*") if f.is_file() and not any(
        part.startswith(".") for part in f.relative_to(p).parts))
    h = hashlib.sha256()
    for f in files:
        h.update(f"{f.relative_to(p) if f != p else f.name}\0{f.stat().st_size}\0".encode())
        with f.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def check_shared_paths(paths: dict[str, str]) -> None:
    """Check on every alive Ray node (one zero-CPU task pinned to it) that each path of `paths` ({setting: path})
    exists there with the driver's content. Raises RayClusterError naming the node and the setting."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    want = {name: _digest(path) for name, path in paths.items()}
    probe = ray.remote(num_cpus=0)(lambda ps: {name: _digest(path) for name, path in ps.items()})
    nodes = alive_nodes()
    seen = ray.get([probe.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False))
                    .remote(paths) for n in nodes], timeout=300)
    for node, got in zip(nodes, seen):
        for name, digest in want.items():
            if got[name] != digest:
                state = "does not exist" if not got[name] else "holds other content"
                raise RayClusterError(
                    f"{name}: {paths[name]} {state} on Ray node {node['NodeManagerAddress']} "
                    f"({node['NodeID'][:12]}); every Ray node reads the run's files from the same path. Fix: put "
                    f"them on a file system every node mounts at that path (NFS, a cloud volume) and pass that path.")


def actor_nodes(address: str, class_name: str = "ClientAppActor") -> dict[int, str]:
    """{pid: Ray node id} of every actor of class `class_name` the cluster at `address` ran (alive or dead), read
    from the cluster's GCS actor table (ray 2.31; a separate process, so that this one does not stay connected)."""
    code = ("import json, ray; ray.init(address=%r, logging_level='error', log_to_driver=False); "
            "print(json.dumps({a['Pid']: a['Address']['NodeID'] for a in ray._private.state.actors().values() "
            "if a['ActorClassName'].endswith(%r) and a.get('Pid')})); ray.shutdown()") % (address, class_name)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    return {int(k): v for k, v in json.loads(out.stdout.strip().splitlines()[-1]).items()}


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


@dataclass
class LoopbackRay:
    """A Ray cluster on this machine: a head and `workers` more raylets, each a `ray start --block` process of its
    own (and own process group) with `cpus` CPUs and a small object store, in a private temp dir (so that no other
    Ray program on the machine finds it by itself). `with LoopbackRay(...) as cluster:` starts it and waits until
    every node is alive (at most `timeout` seconds); leaving the block stops all of it, also on failure."""

    workers: int = 1
    cpus: int = 1
    timeout: float = 120.0
    object_store_bytes: int = 80 * 1024 * 1024
    env: dict | None = None
    temp_dir: Path = field(init=False)
    address: str = field(init=False, default="")
    procs: list[subprocess.Popen] = field(init=False, default_factory=list)
    logs: list[Path] = field(init=False, default_factory=list)

    def __enter__(self) -> "LoopbackRay":
        self.temp_dir = Path(tempfile.mkdtemp(prefix="fray-", dir="/tmp"))  # short: raylet sockets live here
        try:
            gcs, client = _free_ports(2)
            self.address = f"127.0.0.1:{gcs}"
            self._start("head", ["--head", f"--port={gcs}", f"--ray-client-server-port={client}",
                                 "--include-dashboard=false"])
            self._wait(1)
            for i in range(self.workers):
                self._start(f"worker-{i}", [f"--address={self.address}"])
            self._wait(1 + self.workers)
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _start(self, name: str, args: list[str]) -> None:
        dashboard_agent, agent_grpc, runtime_env, metrics = _free_ports(4)
        log = self.temp_dir / f"{name}.log"
        self.logs.append(log)
        with log.open("ab") as out:
            self.procs.append(subprocess.Popen(
                [str(RAY), "start", "--block", *args, f"--num-cpus={self.cpus}", "--num-gpus=0",
                 f"--object-store-memory={self.object_store_bytes}", "--node-ip-address=127.0.0.1",
                 f"--temp-dir={self.temp_dir}", f"--dashboard-agent-listen-port={dashboard_agent}",
                 f"--dashboard-agent-grpc-port={agent_grpc}", f"--runtime-env-agent-port={runtime_env}",
                 f"--metrics-export-port={metrics}", "--disable-usage-stats"],
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
                env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0", **(self.env or {})}))

    def node_ids(self) -> list[str]:
        """Node ids of the cluster's alive nodes with CPUs (asked in a separate process)."""
        code = ("import json, ray; ray.init(address=%r, logging_level='error', log_to_driver=False); "
                "print(json.dumps([n['NodeID'] for n in ray.nodes() if n['Alive'] and n['Resources'].get('CPU')])); "
                "ray.shutdown()") % self.address
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
        if out.returncode != 0:
            return []
        return json.loads(out.stdout.strip().splitlines()[-1])

    def _wait(self, n: int) -> None:
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            dead = [p for p in self.procs if p.poll() is not None]
            if dead:
                raise RuntimeError(f"`ray start` exited with {dead[0].returncode}:\n{self.log_tail()}")
            if len(self.node_ids()) >= n:
                return
            time.sleep(1.0)
        raise TimeoutError(f"the loopback Ray cluster did not reach {n} nodes in {self.timeout:.0f}s:\n"
                           f"{self.log_tail()}")

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(f"--- {log.name}\n" + "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
                         for log in self.logs if log.is_file())

    def close(self) -> None:
        """SIGTERM to each `ray start --block` (it stops its raylet, GCS and workers), then SIGKILL to the process
        group of any that is still there after 30 s; the temp dir goes."""
        for p in reversed(self.procs):  # workers first, the head last
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in reversed(self.procs):
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                pass
            try:
                os.killpg(p.pid, signal.SIGKILL)  # whatever of this group is left (the group is ours alone)
            except ProcessLookupError:
                pass
            p.wait(timeout=30)
        import shutil

        shutil.rmtree(self.temp_dir, ignore_errors=True)
