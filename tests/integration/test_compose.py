"""docker-compose.yml: read by a real parser (`docker-compose config` needs no engine), and run
for real where a Docker engine answers (skipped, saying so, where none does)."""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

REPO = Path(__file__).resolve().parents[2]
REQUIRED = ("POSTGRES_PASSWORD", "NATS_PASSWORD", "SECRET_KEY")
SET = {"POSTGRES_PASSWORD": "pg-pass", "NATS_PASSWORD": "nats-pass", "SECRET_KEY": "fernet-key"}


def compose_binary() -> str:
    found = shutil.which("docker-compose")
    if found is None:
        pytest.skip("docker-compose is not installed (.ci/compose-check installs it with apt-get)")
    return found


def compose_config(env: dict[str, str], *files: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if k not in REQUIRED}
    with tempfile.NamedTemporaryFile("w", suffix=".env") as empty:  # not the checkout's .env
        args = [compose_binary(), "--env-file", empty.name]
        for name in files or ("docker-compose.yml",):
            args += ["-f", name]
        return subprocess.run(
            [*args, "config"],
            cwd=REPO,
            env={**clean, **env},
            capture_output=True,
            text=True,
            timeout=120,
        )


def parsed(env: dict[str, str], *files: str) -> dict[str, Any]:
    yaml = pytest.importorskip("yaml")
    result = compose_config(env, *files)
    assert result.returncode == 0, result.stderr
    return dict(yaml.safe_load(result.stdout))


def test_only_the_api_is_published_and_one_key_serves_api_and_worker() -> None:
    services = parsed(SET)["services"]
    assert "ports" not in services["postgres"] and "ports" not in services["nats"]
    assert [p["target"] for p in services["api"]["ports"]] == [8000]
    api, worker = services["api"]["environment"], services["worker"]["environment"]
    assert api["SECRET_KEY"] == worker["SECRET_KEY"] == "fernet-key"
    assert api["NATS_URL"] == worker["NATS_URL"] == "nats://tasktracker:nats-pass@nats:4222"
    assert api["DATABASE_URL"] == "postgresql://postgres:pg-pass@postgres:5432/tasktracker"
    assert services["nats"]["environment"]["NATS_PASSWORD"] == "nats-pass"
    assert "nats-pass" not in " ".join(services["nats"]["command"])  # not in argv
    conf = (REPO / "deploy" / "nats.conf").read_text()
    assert "password: $NATS_PASSWORD" in conf


def test_the_ports_override_publishes_on_loopback_only() -> None:
    services = parsed(SET, "docker-compose.yml", "docker-compose.ports.yml")["services"]
    for name, port in (("postgres", 5432), ("nats", 4222)):
        published = services[name]["ports"]
        assert len(published) == 1, published
        entry = published[0]
        text = entry if isinstance(entry, str) else f"{entry.get('host_ip')}:{entry['target']}"
        assert text.startswith("127.0.0.1:") and text.split("/")[0].endswith(str(port)), entry


@pytest.mark.parametrize("missing", REQUIRED)
@pytest.mark.parametrize("empty", [False, True])
def test_each_secret_is_required_with_a_clear_message(missing: str, empty: bool) -> None:
    env = {k: v for k, v in SET.items() if k != missing}
    if empty:
        env[missing] = ""
    result = compose_config(env)
    assert result.returncode != 0, result.stdout
    assert f"{missing} is required" in result.stderr, result.stderr


def test_the_image_runs_as_an_unprivileged_user() -> None:
    lines = [line.split() for line in (REPO / "Dockerfile").read_text().splitlines()]
    users = [words[1] for words in lines if words and words[0] == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0"), users


def docker_engine() -> list[str]:
    """The compose command of a Docker engine that answers, or skip saying why."""
    if shutil.which("docker") is None:
        pytest.skip("no Docker engine: the docker command is not installed")
    try:
        info = subprocess.run(["docker", "info"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired) as exc:
        pytest.skip(f"no Docker engine answers `docker info`: {exc}")
    if info.returncode != 0:
        pytest.skip(f"no Docker engine answers `docker info`: {info.stderr.strip()[:200]}")
    plugin = subprocess.run(["docker", "compose", "version"], capture_output=True, timeout=20)
    return ["docker", "compose"] if plugin.returncode == 0 else [compose_binary()]


@pytest.mark.slow
def test_the_stack_starts_and_answers_with_auth_on() -> None:
    """Build, start, migrate, probe; everything is removed afterwards, volumes included."""
    command = docker_engine()
    from cryptography.fernet import Fernet

    project = f"ttsmoke{secrets.token_hex(4)}"
    port = 18000 + secrets.randbelow(1000)
    env = {
        **os.environ,
        "POSTGRES_PASSWORD": secrets.token_hex(16),
        "NATS_PASSWORD": secrets.token_hex(16),
        "SECRET_KEY": Fernet.generate_key().decode(),
        "API_PORT": str(port),
        "COMPOSE_PROJECT_NAME": project,
    }

    def run(*args: str, timeout: float = 1200) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*command, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout
        )

    try:
        up = run("up", "-d", "--build")
        assert up.returncode == 0, up.stderr[-3000:]
        migrated = run("exec", "-T", "api", "alembic", "upgrade", "head")
        assert migrated.returncode == 0, migrated.stderr[-3000:]
        deadline = time.monotonic() + 180
        while True:
            try:
                live = httpx.get(f"http://127.0.0.1:{port}/api/v1/health/ready", timeout=5)
                if live.status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, run("logs", "--tail", "50").stdout
            time.sleep(1)
        assert httpx.get(f"http://127.0.0.1:{port}/api/v1/messages").status_code == 401
        whoami = run("exec", "-T", "api", "id", "-u")
        assert whoami.stdout.strip() not in ("", "0"), whoami
    finally:
        run("down", "-v", "--remove-orphans", timeout=300)


async def test_the_shipped_nats_conf_asks_for_the_password(tmp_path: Path) -> None:
    """deploy/nats.conf on a real nats-server (ports and store moved by flags): the app's
    NATS_URL with the password connects; without it or with another one, it does not."""
    import nats

    from app.core.embedded import free_port, nats_server_binary

    port, monitor = free_port(), free_port()
    argv = [nats_server_binary(), "-c", str(REPO / "deploy" / "nats.conf")]
    argv += ["-p", str(port), "-m", str(monitor), "-sd", str(tmp_path)]
    server = subprocess.Popen(
        argv,
        env={**os.environ, "NATS_PASSWORD": "right-pass"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{monitor}/healthz", timeout=2).is_success:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline and server.poll() is None, "nats did not start"
            time.sleep(0.1)
        client = await nats.connect(f"nats://tasktracker:right-pass@127.0.0.1:{port}")
        await client.jetstream().account_info()  # JetStream is on
        await client.close()
        for url in (f"nats://127.0.0.1:{port}", f"nats://tasktracker:wrong@127.0.0.1:{port}"):
            with pytest.raises(Exception):  # noqa: B017, PT011 - nats raises its own family
                await nats.connect(
                    url, max_reconnect_attempts=0, allow_reconnect=False, connect_timeout=5
                )
    finally:
        server.terminate()
        server.wait(15)


def test_the_scale_profile_has_a_cluster_two_workers_and_a_replica() -> None:
    services = parsed(SET)["services"]
    nodes = [f"nats-{i}" for i in (1, 2, 3)]
    scale = [*nodes, "postgres-replica", "api-scale", "worker-scale-1", "worker-scale-2"]
    for name in scale:
        assert services[name]["profiles"] == ["scale"], name
    for name in ("postgres", "nats", "api", "worker"):
        assert "profiles" not in services[name], name  # `docker compose up` is unchanged
    for name in [*nodes, "postgres-replica", "worker-scale-1", "worker-scale-2"]:
        assert "ports" not in services[name], name
    names = {services[node]["environment"]["NATS_SERVER_NAME"] for node in nodes}
    assert names == set(nodes)
    for node in nodes:
        assert "nats-pass" not in " ".join(services[node]["command"])
    expected = ",".join(f"nats://tasktracker:nats-pass@{node}:4222" for node in nodes)
    for name in ("api-scale", "worker-scale-1", "worker-scale-2"):
        env = services[name]["environment"]
        assert env["NATS_URL"] == expected and env["NATS_STREAM_REPLICAS"] == "3", name
        assert env["SECRET_KEY"] == "fernet-key"
    assert services["api-scale"]["environment"]["DATABASE_READ_URL"] == (
        "postgresql://postgres:pg-pass@postgres-replica:5432/tasktracker"
    )
    assert "--no-sweeper" in services["worker-scale-2"]["command"]
    assert "--no-sweeper" not in services["worker-scale-1"]["command"]
    standby = (REPO / "deploy" / "postgres-standby.sh").read_text()
    assert "pg_basebackup -h postgres" in standby and " -R " in standby
    assert "pg-pass" not in " ".join(services["postgres-replica"]["entrypoint"])


async def test_the_shipped_cluster_conf_forms_a_jetstream_cluster_behind_the_password(
    tmp_path: Path,
) -> None:
    """deploy/nats-cluster.conf on three real nats-servers (ports and routes moved to loopback by
    flags): they form one cluster that holds an R3 stream, and ask clients for the password."""
    import nats

    from app.core.nats_cluster import NatsCluster

    conf = REPO / "deploy" / "nats-cluster.conf"
    env = {"NATS_PASSWORD": "right-pass"}
    with NatsCluster(3, tmp_path / "nats", "tasktracker", config=conf, env=env) as cluster:
        nodes = cluster.nodes
        urls = [f"nats://tasktracker:right-pass@127.0.0.1:{node.port}" for node in nodes]
        client = await nats.connect(urls)
        try:
            from nats.js.api import StreamConfig

            js = client.jetstream()
            info = await js.add_stream(StreamConfig(name="r3", subjects=["r3"], num_replicas=3))
            assert info.config.num_replicas == 3
            assert info.cluster is not None and info.cluster.leader in {n.name for n in nodes}
        finally:
            await client.close()
        with pytest.raises(Exception):  # noqa: B017, PT011 - nats raises its own family
            await nats.connect(
                f"nats://127.0.0.1:{nodes[0].port}",
                max_reconnect_attempts=0,
                allow_reconnect=False,
                connect_timeout=5,
            )
