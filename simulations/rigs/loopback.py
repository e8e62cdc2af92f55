"""Real Flower processes on loopback: a SuperLink, SuperNodes and `flwr run`, each in its own process group and
log file, all killed together at the end. Used by the deployment test and `python -m simulations.benchmarks.deploy`."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["BIN", "ROOT", "APP_PACKAGES", "Proc", "Cluster", "free_ports", "start_listening", "wait_for", "copy_app",
           "cluster_env", "flower"]

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent  # the venv's console scripts: flower-superlink, flower-supernode, flwr, fedctx
ANSI = re.compile(r"\x1b\[[0-9;]*m")
APP_PACKAGES = ("client", "common", "server")  # what the ServerApp and the ClientApp import


#: Flower's console scripts, as module:function (the venv's bin/ files say the same)
FLOWER_ENTRY = {"flower-supernode": "flwr.supernode.cli:flower_supernode",
                "flower-superlink": "flwr.server.app:run_superlink", "flwr": "flwr.cli.app:app"}


def flower(script: str) -> list[str]:
    """The command that runs one of Flower's console scripts without TensorFlow: `import flwr` imports it through
    flwr.server.utils.tensorboard, an optional import Flower skips when TensorFlow is missing, and the SuperLink,
    the SuperNodes and the `flwr` CLI never use it. Measured (docs/benchmarks.md, "Many SuperNodes"): importing
    Flower's SuperNode takes 645 MiB and most of its start-up with TensorFlow, 113 MiB without. The processes a
    SuperNode starts for each message (flwr-clientapp, which runs this project's ClientApp) keep TensorFlow."""
    module, func = FLOWER_ENTRY[script].split(":")
    return [sys.executable, "-c", f"import sys; sys.modules['tensorflow'] = None; sys.argv[0] = {script!r}; "
                                  f"from {module} import {func}; sys.exit({func}())"]


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen
    log: Path

    def text(self) -> str:
        return ANSI.sub("", self.log.read_text(errors="replace")) if self.log.is_file() else ""


@dataclass
class Cluster:
    """Every process the test starts, each in its own process group (it and the Flower processes it spawns:
    flower-superexec, flwr-serverapp, flwr-clientapp), killed together at the end."""

    root: Path
    env: dict
    procs: list[Proc] = field(default_factory=list)

    def start(self, name: str, args: list[str], cwd: Path, **env: str) -> Proc:
        cwd.mkdir(parents=True, exist_ok=True)
        log = self.root / "logs" / f"{name}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("ab") as out:
            popen = subprocess.Popen(args, cwd=cwd, env={**self.env, **env}, stdout=out, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True)
        proc = Proc(name, popen, log)
        self.procs.append(proc)
        return proc

    def kill(self, proc: Proc) -> None:
        try:
            os.killpg(proc.popen.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        try:
            proc.popen.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pass

    def close(self) -> None:
        for proc in self.procs:
            self.kill(proc)

    def dump(self, lines: int = 60) -> None:
        for proc in self.procs:
            tail = proc.text().splitlines()[-lines:]
            print(f"\n===== {proc.name} (pid {proc.popen.pid}, exit {proc.popen.poll()}): last {len(tail)} lines "
                  f"of {proc.log}\n" + "\n".join(tail), flush=True)


def free_ports(n: int) -> list[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


#: what a Flower server process says when a port it must bind is taken (flwr.common.grpc), then it exits
PORT_IN_USE = "is already in use"


def _listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1.0)
        return s.connect_ex(("127.0.0.1", port)) == 0


def start_listening(start, n_ports: int, timeout: float, attempts: int = 5) -> tuple[Proc, list[int]]:
    """Start a process that binds n_ports loopback ports, and return it with its ports once it listens on all.

    start(ports, attempt) -> Proc starts it on the given ports. Ports picked free (`free_ports`) can be taken by
    another process before this one binds them; Flower then exits saying the port is in use, and the whole
    start is made again on new ports. Returns once every port accepts connections with the process alive, or
    once it exited for another reason (then the caller's next `wait_for` on it says so)."""
    for attempt in range(attempts):
        ports = free_ports(n_ports)
        proc = start(ports, attempt)
        wait_for(f"{proc.name} to listen on {ports}", lambda: proc.popen.poll() is not None
                 or all(_listening(p) for p in ports), timeout)
        if proc.popen.poll() is None or PORT_IN_USE not in proc.text():
            return proc, ports  # listening, or exited for another reason (the caller's next wait reports it)
    raise AssertionError(f"{proc.name}: a port was taken by another process on each of {attempts} starts")


def wait_for(what: str, check, timeout: float, procs: tuple[Proc, ...] = ()):
    """Poll check() until it returns something truthy; fail early if one of procs exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        for p in procs:
            if p.popen.poll() is not None:
                raise AssertionError(f"{p.name} exited with {p.popen.returncode} while waiting for {what}")
        time.sleep(1.0)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def cluster_env(root: Path) -> dict:
    """The environment of every process: the venv's bin first on PATH (the SuperLink and SuperNodes start
    flower-superexec, flwr-serverapp and flwr-clientapp by name), quiet TensorFlow, unbuffered logs."""
    return {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", "TF_CPP_MIN_LOG_LEVEL": "3",
            "PYTHONUNBUFFERED": "1", "FLWR_HOME": str(root / "flwr-cli")}


def copy_app(dest: Path, federation: str, table: str) -> Path:
    """The app as `flwr run` ships it (its packages and pyproject.toml), with one more federation table."""
    for pkg in APP_PACKAGES:
        shutil.copytree(ROOT / pkg, dest / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    (dest / "pyproject.toml").write_text((ROOT / "pyproject.toml").read_text()
                                         + f"\n[tool.flwr.federations.{federation}]\n{table}\n")
    return dest
