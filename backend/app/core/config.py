"""Settings, read once from the environment and `.env`; nothing else reads os.environ."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic import ValidationError as PydanticValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from app.core import pgmemory
from app.core.errors import ConfigurationError
from app.core.netpolicy import NetworkPolicy
from app.core.sizes import SIZE

ProviderType = Literal["openai", "ollama", "local"]

REPO_ROOT = Path(__file__).resolve().parents[3]


DEFAULT_EF_SEARCH = 100  # hnsw.ef_search of a search asking for fewer rows


class Settings(BaseSettings):
    """Process-wide configuration. Empty DATABASE_URL / NATS_URL mean 'use the embedded servers'."""

    model_config = SettingsConfigDict(env_file=".env", extra="ignore")

    database_url: str | None = None
    # A streaming replica for search and other read-only routes; unset: everything on the primary.
    database_read_url: str | None = None
    # What sits between the app and PostgreSQL. `session`: nothing, or a pooler in session mode.
    # `transaction`: a pooler in transaction mode (PgBouncer's pool_mode = transaction,
    # Supavisor): connections then carry no settings of their own (app.db.create_engine) and
    # migrations and index builds, which need a session, go to DATABASE_DIRECT_URL.
    database_pool_mode: Literal["session", "transaction"] = "session"
    # The PostgreSQL server itself, when DATABASE_URL goes through a transaction pooler.
    database_direct_url: str | None = None
    read_replica_max_lag_seconds: float = Field(default=10.0, ge=0)
    read_replica_check_seconds: float = Field(default=5.0, gt=0)
    # One NATS server, or several of one cluster, comma-separated (nats://a:4222,nats://b:4222):
    # the clients connect to any and move to another when it goes.
    nats_url: str | None = None
    data_dir: Path = REPO_ROOT / ".data"
    # The embedded server's shared_buffers (app.core.pgmemory): auto (a quarter of the memory,
    # 128MB-8GB) or a size such as 2GB; applied when the server starts.
    embedded_postgres_shared_buffers: str = pgmemory.AUTO

    # Embeddings: the column is vector(EMBEDDING_DIMENSIONS) when the initial revision runs.
    embedding_dimensions: int = Field(default=384, ge=1, le=16000)
    embedding_provider: ProviderType = "local"
    embedding_model: str | None = None
    embedding_base_url: str | None = None
    embedding_api_key: SecretStr | None = None
    embedding_batch_size: int = Field(default=256, ge=1, le=2048)
    embedding_max_concurrency: int = Field(default=4, ge=1, le=64)
    embedding_max_retries: int = Field(default=5, ge=0, le=20)
    embedding_timeout_seconds: float = Field(default=30.0, gt=0)
    embedding_max_attempts: int = Field(default=3, ge=1, le=100)
    # A worker's claim on the rows it embeds, renewed while it works; a dead worker's expires
    # after this long and the rows are taken again.
    embedding_lease_seconds: float = Field(default=30.0, ge=1)
    # How long a task retries a database that went away (restart, failover) before it gives up.
    db_retry_seconds: float = Field(default=300.0, ge=0)
    query_cache_size: int = Field(default=1024, ge=0)
    # How often a process looks whether providers or embedding spaces changed (a version row).
    config_check_seconds: float = Field(default=2.0, ge=0)

    # Chat model for knowledge extraction; unset means the offline extractor.
    chat_model: str | None = None
    chat_base_url: str | None = None
    chat_api_key: SecretStr | None = None

    # Where providers stored through the API may connect (app.core.netpolicy): comma-separated
    # IP addresses, networks (10.0.0.0/8) or host names that may be loopback or private.
    # Link-local and cloud metadata addresses are refused whatever this says.
    provider_allowed_hosts: str = ""

    # Secrets at rest: a Fernet key. Unset: one is generated under data_dir/secret.key.
    secret_key: SecretStr | None = None

    # Pipeline.
    task_broker: Literal["nats", "memory"] = "nats"
    # One stream per deployment; the subject and the durable consumer are named after it.
    nats_stream: str = Field(default="tasktracker", pattern=r"^[A-Za-z0-9_-]+$")
    sweeper_requeue_seconds: float = Field(default=600.0, gt=0)
    task_batch_size: int = Field(default=256, ge=1, le=5000)
    sweeper_interval_seconds: float = Field(default=30.0, gt=0)
    sweeper_grace_seconds: float = Field(default=60.0, ge=0)
    worker_max_async_tasks: int = Field(default=4, ge=1, le=256)
    # On SIGTERM/SIGINT, in-flight tasks get this long to finish; the rest are cut (their leases
    # expire and JetStream delivers them again), so a stopped worker never lingers.
    worker_stop_seconds: float = Field(default=10.0, gt=0)
    nats_ack_wait_seconds: float = Field(default=120.0, gt=0)
    # A message that never completes (crashes or hangs its worker) is delivered this many times,
    # then its rows are parked with the reason.
    nats_max_deliver: int = Field(default=5, ge=1, le=1000)
    # The stream is a work queue (acked tasks are removed); these bound what waits in it. A
    # task dropped by a bound is not lost: its rows are still pending and the sweeper requeues them.
    nats_stream_max_age_seconds: float = Field(default=7 * 24 * 3600.0, gt=0)
    nats_stream_max_bytes: int = Field(default=1024**3, ge=1024 * 1024)
    # Copies of the stream (and its consumer, and the workers bucket) kept by a JetStream
    # cluster: 3 survives the loss of any one node. 1 on a single server. Applied to an
    # existing stream at startup.
    nats_stream_replicas: int = Field(default=1, ge=1, le=5)
    # A message queued for extraction whose task has neither finished nor failed after this
    # long (lost, or crashed) is queued again by the next `all_pending` call.
    extraction_requeue_seconds: float = Field(default=1800.0, ge=0)

    # Search. ef_search 100: recall@10 0.9735 at 1M x 384 (generator) and 0.9355 on real text
    # at 95k rows, against 0.964 and 0.898 at 64, for about 0.6 ms more at 1M (docs/BENCHMARKS.md).
    hnsw_ef_search: int = Field(default=DEFAULT_EF_SEARCH, ge=1, le=1000)
    hnsw_max_scan_tuples: int = Field(default=20000, ge=1)
    # From this many rows on, a search always uses a valid HNSW index (never a sequential scan
    # the planner misjudges); below, an exact scan is as fast and may be chosen.
    search_index_min_rows: int = Field(default=1000, ge=0)

    # Vector index build (the add_vector_indexes revision, its repair, `tasktracker index`).
    # The HNSW graph should fit: about rows x (4 x dims + 670) bytes (100k x 1536: ~680 MB).
    # A build that spills is ~10x slower (measured: 506 s with 256MB vs 52 s with 1GB), so the
    # build raises its session's value to what the graph needs, up to the ceiling, and says so.
    index_maintenance_work_mem: str = "1GB"
    # The HNSW graph: pgvector's m and ef_construction. 16 and 64 are the revision's. A larger
    # ef_construction makes a better-connected graph for a longer build: at 1M x 384, 512 lifts
    # recall@10 at ef_search 100 from 0.95 to 0.9975 for 3.8x the build time (1,304 vs 342 s,
    # docs/BENCHMARKS.md); up to a few hundred thousand rows 64 is enough. A changed value
    # is applied online by the next `alembic upgrade head` or `tasktracker index rebuild`
    # (ALTER INDEX ... SET, then REINDEX CONCURRENTLY: searches keep the old graph meanwhile).
    index_hnsw_m: int = Field(default=16, ge=2, le=100)
    index_hnsw_ef_construction: int = Field(default=64, ge=4, le=1000)
    index_maintenance_work_mem_max: str = "4GB"
    index_parallel_workers: int = Field(default=2, ge=0, le=64)
    index_lock_timeout: str = "10s"
    index_progress_interval_seconds: float = Field(default=1.0, gt=0)

    # API.
    api_host: str = "127.0.0.1"
    # Bearer tokens on every route but health. Off only for local development: the API then
    # refuses to bind anything but the loopback interface.
    auth_enabled: bool = True
    api_port: int = Field(default=8000, ge=0, le=65535)
    db_pool_size: int = Field(default=10, ge=1)
    db_max_overflow: int = Field(default=10, ge=0)
    db_pool_timeout_seconds: float = Field(default=10.0, gt=0)
    # Client-side bound on one statement of the app's pools (never on migrations: see db.py).
    db_command_timeout_seconds: float = Field(default=60.0, gt=0)
    # Limits (app.api.limits). Rate limits are token buckets per token and route group, kept
    # in each API process: N API processes admit up to N times as much. 0 turns one off.
    max_body_bytes: int = Field(default=1024 * 1024, ge=1)
    rate_limit_search_per_minute: int = Field(default=600, ge=0)
    rate_limit_embed_now_per_minute: int = Field(default=120, ge=0)
    rate_limit_extract_per_minute: int = Field(default=30, ge=0)

    log_level: str = "INFO"
    # text: one human-readable line a record; json: one JSON object a line (for log shippers).
    log_format: Literal["text", "json"] = "text"

    # Observability (app.observability). /metrics on the API needs a bearer token: METRICS_TOKEN
    # when set (a scrape-only secret), else any API token; METRICS_OPEN=true drops the check
    # (for an API port that only a private network reaches). The worker serves its own
    # metrics on WORKER_METRICS_HOST:WORKER_METRICS_PORT (0: not served).
    metrics_token: SecretStr | None = None
    metrics_open: bool = False
    worker_metrics_host: str = "127.0.0.1"
    worker_metrics_port: int = Field(default=0, ge=0, le=65535)

    @field_validator("embedded_postgres_shared_buffers")
    @classmethod
    def _memory_size(cls, value: str) -> str:
        if not pgmemory.is_auto(value) and not SIZE.match(value):
            raise ValueError("must be auto or a size as Postgres writes it, such as 512MB or 2GB")
        return value

    @model_validator(mode="after")
    def _hnsw_graph(self) -> Settings:
        if self.index_hnsw_ef_construction < 2 * self.index_hnsw_m:
            raise ValueError(
                "INDEX_HNSW_EF_CONSTRUCTION must be at least twice INDEX_HNSW_M (pgvector refuses "
                f"to build with ef_construction {self.index_hnsw_ef_construction} "
                f"and m {self.index_hnsw_m})"
            )
        return self

    def provider_network(self) -> NetworkPolicy:
        """The network policy for providers, from PROVIDER_ALLOWED_HOSTS."""
        return NetworkPolicy.parse(self.provider_allowed_hosts.split(","))

    @property
    def postgres_dir(self) -> Path:
        return self.data_dir / "postgres"

    @property
    def nats_dir(self) -> Path:
        return self.data_dir / "nats"


def settings_error(exc: PydanticValidationError) -> ConfigurationError:
    """One line naming each wrong setting as its environment variable (never its value: it may
    be a secret)."""
    wrong = [_wrong_setting(error["loc"], error["msg"]) for error in exc.errors()]
    return ConfigurationError(
        f"the settings are not valid ({'; '.join(wrong)}). "
        "Fix: correct them in the environment or in .env (see .env.example)."
    )


def _wrong_setting(location: tuple[int | str, ...], message: str) -> str:
    said = message.removeprefix("Value error, ")
    name = "_".join(str(part) for part in location).upper()
    return f"{name}: {said}" if name else said  # a check across settings names them itself


@lru_cache
def get_settings() -> Settings:
    try:
        return Settings()
    except PydanticValidationError as exc:
        raise settings_error(exc) from None
