"""`tasktracker demo`: the outage and the cure, end to end, on real components.

1. a fresh demo database at the revision before the vector indexes, loaded with the team chat:
   0 % coverage, no HNSW index, a search that scans every row and finds nothing;
2. `alembic upgrade head`: HNSW indexes built CONCURRENTLY and verified;
3. the backfill through NATS JetStream and a real worker process;
4. new messages and knowledge extraction: the hook alone embeds what it produced;
5. the team's validation call through the real API (uvicorn, bearer token of search scope),
   the plan, the latency;
6. a before/after table, every figure measured in this run, and a ready curl line.
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import time
from dataclasses import dataclass, field
from typing import Any

import httpx
import numpy as np
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
from rich.table import Table
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from app.auth import token_service
from app.auth.curl import curl_example
from app.core import endpoints
from app.core.config import DEFAULT_EF_SEARCH, Settings
from app.core.embedded import free_port
from app.core.errors import ConfigurationError
from app.core.supervisor import Child, api_child, stop_all, worker_child
from app.core.urls import to_asyncpg_url, to_libpq_url, with_database
from app.db import alembic as alembic_command
from app.db import create_engine, session_factory
from app.demo import loader
from app.embedding import status as status_service
from app.embedding.backfill import BackfillPlan, run_backfill
from app.embedding.embedding_service import EmbeddingService
from app.embedding.entities import ENTITIES, MESSAGES
from app.embedding.provider_service import spec_from_settings
from app.embedding.providers import ProviderSpec, build_provider
from app.models.api_token import TokenScope
from app.search import semantic_search_service as search

DEMO_DATABASE = "tasktracker_demo"
QUERY = "bug fix"
LATENCY_RUNS = 20


@dataclass
class DemoOptions:
    provider: str = "local"
    scale: int = 0
    keep: bool = False
    serve: bool = False
    as_json: bool = False
    timeout: float = 110.0


@dataclass
class Demo:
    options: DemoOptions
    settings: Settings
    console: Console
    report: dict[str, Any] = field(default_factory=dict)
    children: list[Child] = field(default_factory=list)
    engine: AsyncEngine | None = None
    db_url: str = ""
    nats: str = ""
    spec: ProviderSpec | None = None
    query_service: EmbeddingService | None = None
    token: str = ""

    def say(self, message: str) -> None:
        if not self.options.as_json:
            self.console.print(message)

    def step(self, number: int, title: str) -> None:
        self.say(f"\n[bold cyan]{number}. {title}[/]")

    @property
    def env(self) -> dict[str, str]:
        assert self.spec is not None
        return {
            "DATABASE_URL": self.db_url,
            "NATS_URL": self.nats,
            "EMBEDDING_PROVIDER": self.spec.type.value,
            "EMBEDDING_DIMENSIONS": str(self.spec.dimensions),
        }


def check_provider(options: DemoOptions, settings: Settings) -> ProviderSpec:
    """The provider the demo uses; openai/ollama fail early with what to set."""
    settings = settings.model_copy(update={"embedding_provider": options.provider})
    spec = spec_from_settings(settings)
    if options.provider == "openai" and not spec.api_key and not spec.base_url:
        raise ConfigurationError(
            "--provider openai needs EMBEDDING_API_KEY (and EMBEDDING_BASE_URL for an OpenAI-compatible "
            "server). Fix: set them, or run the demo with the default local model."
        )
    if options.provider == "ollama":
        base = (spec.base_url or "http://127.0.0.1:11434").rstrip("/").removesuffix("/v1")
        try:
            httpx.get(f"{base}/api/version", timeout=2.0).raise_for_status()
        except httpx.HTTPError as exc:
            raise ConfigurationError(
                f"--provider ollama: no Ollama server answers at {base} ({exc}). "
                "Fix: start `ollama serve` or set EMBEDDING_BASE_URL."
            ) from exc
        spec = ProviderSpec(**{**spec.__dict__, "base_url": base})
    return spec


async def run_demo(options: DemoOptions, settings: Settings, console: Console) -> dict[str, Any]:
    """Run every step; stops every process it started, whatever happens."""
    demo = Demo(options, settings, console)
    demo.spec = check_provider(options, settings)
    started = time.perf_counter()
    try:
        await step_outage(demo)
        await step_migrate(demo)
        await step_backfill(demo)
        await step_hook(demo)
        await step_validate(demo)
        step_summary(demo)
        show_try_it(demo)
        demo.report["seconds"] = round(time.perf_counter() - started, 1)
        if options.serve:
            await serve_forever(demo)
        return demo.report
    finally:
        stop_all(demo.children)
        if demo.query_service is not None:
            await demo.query_service.aclose()
        if demo.engine is not None:
            await demo.engine.dispose()
        if not options.keep and demo.db_url:
            await _admin(demo, f'DROP DATABASE IF EXISTS "{DEMO_DATABASE}" WITH (FORCE)')
        endpoints.release()


# ----------------------------------------------------------------------------- step 1


def _admin_url(settings: Settings) -> str:
    return with_database(to_libpq_url(endpoints.ensure_database_url(settings)), "postgres")


async def _admin(demo: Demo, sql: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(_admin_url(demo.settings))
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def alembic(demo: Demo, *args: str) -> None:
    result = alembic_command(demo.db_url, *args, env=demo.env)
    if result.returncode != 0:
        raise ConfigurationError(
            f"alembic {' '.join(args)} failed: {result.stderr.strip().splitlines()[-1:]}"
        )


async def step_outage(demo: Demo) -> None:
    demo.step(1, "The outage: a fresh demo database, the team chat, no embeddings, no index")
    await _admin(demo, f'DROP DATABASE IF EXISTS "{DEMO_DATABASE}" WITH (FORCE)')
    await _admin(demo, f'CREATE DATABASE "{DEMO_DATABASE}"')
    demo.db_url = to_asyncpg_url(with_database(_admin_url(demo.settings), DEMO_DATABASE))
    demo.nats = endpoints.ensure_nats_url(demo.settings)
    alembic(demo, "upgrade", "0001")
    demo.engine = create_engine(
        url=demo.db_url, settings=demo.settings, pool_size=4, max_overflow=4
    )
    async with demo.engine.begin() as conn:
        messages = loader.read_jsonl("messages.jsonl")
        if demo.options.scale:
            from app.demo.generate import generate_messages

            messages += list(generate_messages(demo.options.scale))
        ids = await loader.insert_messages(conn, messages)
        topics, atoms = await loader.insert_knowledge(conn, ids)
        await conn.execute(text("ANALYZE"))
    demo.say(f"loaded {len(ids)} messages, {atoms} atoms, {topics} topics (alembic at 0001)")
    assert demo.spec is not None
    demo.query_service = EmbeddingService(build_provider(demo.spec))
    demo.report["before"] = await snapshot(demo)
    show_snapshot(demo, demo.report["before"])


async def snapshot(demo: Demo) -> dict[str, Any]:
    """Coverage, index health, the search plan, its latency and what it returns."""
    assert demo.engine is not None and demo.query_service is not None
    async with session_factory(demo.engine)() as session:
        coverage = {row.entity: row.as_dict() for row in await status_service.coverage(session)}
        indexes = {i.name: i.healthy for i in await status_service.index_states(session)}
    query = await demo.query_service.embed_query(QUERY)
    plan = await explain_search(demo.engine, query)
    latencies, count = [], 0
    for _ in range(LATENCY_RUNS):
        async with session_factory(demo.engine)() as session:
            began = time.perf_counter()
            page = await search.search(session, MESSAGES, query, limit=5)
            latencies.append((time.perf_counter() - began) * 1000)
            count = len(page.hits)
            await session.commit()
    return {
        "coverage": coverage,
        "indexes": indexes,
        "plan": plan,
        "search_ms_p50": round(statistics.median(latencies), 2),
        "results": count,
    }


async def explain_search(engine: AsyncEngine, query: np.ndarray) -> dict[str, Any]:
    """The planner's own choice for the app's search query, and the plan through the index.

    On a table of a few hundred rows Postgres rightly prefers reading its few pages; the second
    plan (sequential scans disabled for that one statement) shows the HNSW index serving it.
    """
    natural = await _explain(engine, query, force_index=False)
    forced = await _explain(engine, query, force_index=True)
    return {**natural, "index_plan": forced}


async def _explain(engine: AsyncEngine, query: np.ndarray, *, force_index: bool) -> dict[str, Any]:
    from pgvector import Vector

    async with engine.begin() as conn:
        await conn.execute(
            text(f"SELECT set_config('hnsw.ef_search', '{DEFAULT_EF_SEARCH}', true)")
        )
        if force_index:
            await conn.execute(text("SELECT set_config('enable_seqscan', 'off', true)"))
        result = await conn.execute(
            text(
                "EXPLAIN (ANALYZE, FORMAT JSON) SELECT id, embedding <=> CAST(:q AS vector) AS d "
                "FROM messages WHERE embedding IS NOT NULL ORDER BY embedding <=> CAST(:q AS vector) LIMIT 5"
            ),
            {"q": Vector(query)},
        )
        plan = result.scalar_one()[0]
    node = _scan_node(plan["Plan"])
    return {
        "node": node.get("Node Type"),
        "index": node.get("Index Name"),
        "execution_ms": round(float(plan.get("Execution Time", 0.0)), 3),
    }


def _scan_node(node: dict[str, Any]) -> dict[str, Any]:
    if "Scan" in node.get("Node Type", ""):
        return node
    for child in node.get("Plans", []):
        found = _scan_node(child)
        if found:
            return found
    return {}


def show_snapshot(demo: Demo, snap: dict[str, Any]) -> None:
    table = Table(show_header=True)
    for column in ("entity", "total", "embedded", "coverage %"):
        table.add_column(column, justify="right" if column != "entity" else "left")
    for entity, row in snap["coverage"].items():
        table.add_row(entity, str(row["total"]), str(row["embedded"]), f"{row['coverage_pct']:.1f}")
    demo.say("")
    if not demo.options.as_json:
        demo.console.print(table)
    indexes = ", ".join(
        f"{name}: {'valid' if ok else 'missing'}" for name, ok in snap["indexes"].items()
    )
    demo.say(f"indexes: {indexes}")
    demo.say(
        f"search '{QUERY}': {describe_plan(snap['plan'])}; {snap['results']} results; "
        f"median {snap['search_ms_p50']} ms over {LATENCY_RUNS} runs"
    )


def describe_plan(plan: dict[str, Any]) -> str:
    """'Seq Scan (planner's choice); through the index: Index Scan using ... 0.4 ms'."""
    text = f"planner chose {plan['node']}" + (f" using {plan['index']}" if plan["index"] else "")
    forced = plan.get("index_plan") or {}
    if forced.get("index"):
        text += f"; through the index: {forced['node']} using {forced['index']} ({forced['execution_ms']} ms)"
    else:
        text += "; no vector index to use"
    return text


# ----------------------------------------------------------------------------- step 2


async def step_migrate(demo: Demo) -> None:
    demo.step(2, "alembic upgrade head: HNSW indexes built CONCURRENTLY")
    began = time.perf_counter()
    alembic(demo, "upgrade", "head")
    assert demo.engine is not None
    async with session_factory(demo.engine)() as session:
        states = await status_service.index_states(session)
    for state in states:
        demo.say(
            f"{state.name}: valid={state.valid} ready={state.ready} definition ok={state.matches}"
        )
    if not all(s.healthy for s in states):
        raise ConfigurationError("the vector indexes are not valid after the upgrade")
    demo.report["migrate_seconds"] = round(time.perf_counter() - began, 2)


# ----------------------------------------------------------------------------- step 3


def start_worker(demo: Demo) -> None:
    worker = worker_child(demo.env, "--no-sweeper")
    worker.start()
    demo.children.append(worker)


async def wait_for_coverage(demo: Demo, label: str) -> float:
    """Follow coverage with a progress bar until every row is embedded; returns seconds."""
    assert demo.engine is not None
    began = time.perf_counter()
    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        console=demo.console,
        disable=demo.options.as_json,
    )
    with progress:
        tasks: dict[str, Any] = {}
        while True:
            async with session_factory(demo.engine)() as session:
                rows = await status_service.coverage(session)
            for row in rows:
                if row.entity not in tasks:
                    tasks[row.entity] = progress.add_task(f"{label} {row.entity}", total=row.total)
                progress.update(tasks[row.entity], completed=row.current, total=row.total)
            if all(row.current == row.total for row in rows):
                return time.perf_counter() - began
            if time.perf_counter() - began > demo.options.timeout:
                raise ConfigurationError(
                    f"coverage did not reach 100% in {demo.options.timeout:.0f}s: {[r.as_dict() for r in rows]}"
                )
            if any(child.exited() is not None for child in demo.children):
                raise ConfigurationError("the worker exited; see its output above")
            await asyncio.sleep(0.25)


async def step_backfill(demo: Demo) -> None:
    demo.step(3, "The backfill through NATS JetStream and a worker process")
    from app.broker import broker
    from app.embedding.tasks import enqueuer

    assert demo.engine is not None
    start_worker(demo)
    os.environ["NATS_URL"] = demo.nats  # the broker in this process publishes there
    await broker.startup()
    try:
        plan = BackfillPlan(
            entities=list(ENTITIES.values()), page_size=demo.settings.task_batch_size
        )
        report = await run_backfill(demo.engine, plan, enqueue=enqueuer(None))
        demo.say(f"queued {report.handled} in {report.seconds:.2f}s")
        seconds = await wait_for_coverage(demo, "backfill")
    finally:
        await broker.shutdown()
    total = sum(report.handled.values())
    demo.report["backfill"] = {
        "rows": total,
        "seconds": round(seconds, 2),
        "rows_per_second": round(total / seconds, 1),
    }
    demo.say(f"backfill: {total} rows embedded in {seconds:.1f}s ({total / seconds:.0f} rows/s)")


# ----------------------------------------------------------------------------- step 4


async def step_hook(demo: Demo) -> None:
    demo.step(4, "New messages arrive; extraction runs; the hook embeds what it made")
    from app.broker import broker
    from app.knowledge.tasks import extract_knowledge_from_messages_task

    assert demo.engine is not None
    incoming = loader.read_jsonl("incoming.jsonl")
    async with demo.engine.begin() as conn:
        await loader.insert_messages(conn, incoming)  # rows only: no embedding queued here
        pending = list(
            (
                await conn.execute(
                    text(
                        "SELECT id FROM messages WHERE extraction_status = 'pending' ORDER BY sent_at"
                    )
                )
            ).scalars()
        )
        atoms_before = (await conn.execute(text("SELECT count(*) FROM atoms"))).scalar_one()
    demo.say(f"{len(incoming)} new messages; {len(pending)} messages not extracted yet")
    await broker.startup()
    try:
        began = time.perf_counter()
        for start in range(0, len(pending), 50):
            await extract_knowledge_from_messages_task.kiq(
                [str(i) for i in pending[start : start + 50]], None
            )
        await _wait_extracted(demo, pending)
        seconds = await wait_for_coverage(demo, "hook")
    finally:
        await broker.shutdown()
    async with demo.engine.connect() as conn:
        atoms_after = (await conn.execute(text("SELECT count(*) FROM atoms"))).scalar_one()
    demo.report["hook"] = {
        "messages_extracted": len(pending),
        "new_atoms": atoms_after - atoms_before,
        "seconds_to_full_coverage": round(time.perf_counter() - began, 2),
        "backfill_runs": 0,
    }
    demo.say(
        f"extraction made {atoms_after - atoms_before} atoms; all embedded {seconds:.1f}s later, no backfill"
    )


async def _wait_extracted(demo: Demo, ids: list[Any]) -> None:
    assert demo.engine is not None
    deadline = time.perf_counter() + demo.options.timeout
    while time.perf_counter() < deadline:
        async with demo.engine.connect() as conn:
            left = (
                await conn.execute(
                    text(
                        "SELECT count(*) FROM messages WHERE id = ANY(:ids) AND extraction_status NOT IN ('done', 'failed')"
                    ),
                    {"ids": ids},
                )
            ).scalar_one()
        if left == 0:
            return
        await asyncio.sleep(0.25)
    raise ConfigurationError("extraction did not finish in time")


# ----------------------------------------------------------------------------- step 5


def start_api(demo: Demo) -> str:
    port = free_port()
    api = api_child(demo.env, "127.0.0.1", port, "--log-level", "warning")
    api.start()
    demo.children.append(api)
    return f"http://127.0.0.1:{port}"


async def _wait_ready(base: str, timeout: float = 30.0) -> None:
    deadline = time.perf_counter() + timeout
    async with httpx.AsyncClient() as client:
        while time.perf_counter() < deadline:
            try:
                if (await client.get(f"{base}/api/v1/health/live")).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.2)
    raise ConfigurationError("the API did not start")


async def create_demo_token(demo: Demo) -> str:
    """A search-scope token in the demo database: all the validation call needs."""
    assert demo.engine is not None
    async with session_factory(demo.engine)() as session:
        token, _ = await token_service.create_token(session, TokenScope.search, "demo")
        await session.commit()
    return token


async def step_validate(demo: Demo) -> None:
    demo.step(5, "The team's validation call, through the real API")
    base = start_api(demo)
    await _wait_ready(base)
    url = f"{base}/api/v1/semantic_search/messages"
    async with httpx.AsyncClient(timeout=30.0) as anonymous:
        refused = (await anonymous.post(url, json={"query": QUERY, "limit": 5})).status_code
    demo.token = await create_demo_token(demo)
    demo.say(f"without a token: HTTP {refused}; with a token of scope search:")
    demo.say(f'POST {url} {{"query": "{QUERY}", "limit": 5}}')
    headers = {"Authorization": f"Bearer {demo.token}"}
    async with httpx.AsyncClient(timeout=30.0, headers=headers) as client:
        body = (await client.post(url, json={"query": QUERY, "limit": 5})).raise_for_status().json()
        for rank, hit in enumerate(body["results"], start=1):
            content = " ".join(hit["item"]["content"].split())[:90]
            demo.say(f"  {rank}. [{hit['similarity']:.3f}] #{hit['item']['channel']}: {content}")
        latencies = []
        for _ in range(LATENCY_RUNS):
            began = time.perf_counter()
            (await client.post(url, json={"query": QUERY, "limit": 5})).raise_for_status()
            latencies.append((time.perf_counter() - began) * 1000)
        hybrid = await _hybrid_probe(client, url)
    demo.report["api"] = {
        "results": len(body["results"]),
        "top": [hit["item"].get("external_id") for hit in body["results"]],
        "latency_ms_p50": round(statistics.median(latencies), 2),
        "hybrid": hybrid,
        "url": base,
        "auth": {"token_scope": TokenScope.search.value, "status_without_token": refused},
    }
    demo.report["after"] = await snapshot(demo)
    demo.say(f"plan: {describe_plan(demo.report['after']['plan'])}")
    demo.say(f"API median {statistics.median(latencies):.1f} ms over {LATENCY_RUNS} calls")
    demo.say(
        f"hybrid search for {hybrid['code']}: rank {hybrid['vector_rank']} by vector alone, "
        f"rank {hybrid['hybrid_rank']} with mode=hybrid"
    )


async def _hybrid_probe(client: httpx.AsyncClient, url: str) -> dict[str, Any]:
    meta = loader.read_meta()
    code, target = meta["exact_code"], meta["exact_code_message"]

    async def rank(mode: str) -> int | None:
        body = (
            (await client.post(url, json={"query": code, "limit": 50, "mode": mode}))
            .raise_for_status()
            .json()
        )
        ids = [hit["item"].get("external_id") for hit in body["results"]]
        return ids.index(target) + 1 if target in ids else None

    return {
        "code": code,
        "message": target,
        "vector_rank": await rank("vector"),
        "hybrid_rank": await rank("hybrid"),
    }


# ----------------------------------------------------------------------------- step 6


def step_summary(demo: Demo) -> None:
    demo.step(6, "Before and after, measured in this run")
    before, after = demo.report["before"], demo.report["after"]
    table = Table(show_header=True)
    table.add_column("")
    table.add_column("before")
    table.add_column("after")
    for entity in ("messages", "atoms"):
        b, a = before["coverage"][entity], after["coverage"][entity]
        table.add_row(
            f"{entity} coverage",
            f"{b['embedded']}/{b['total']} ({b['coverage_pct']:.0f}%)",
            f"{a['embedded']}/{a['total']} ({a['coverage_pct']:.0f}%)",
        )
    table.add_row(
        "HNSW indexes valid",
        str(sum(before["indexes"].values())) + "/2",
        str(sum(after["indexes"].values())) + "/2",
    )
    index_plan = after["plan"]["index_plan"]
    table.add_row("planner's choice", str(before["plan"]["node"]), str(after["plan"]["node"]))
    table.add_row(
        "plan through the index",
        "no index",
        f"{index_plan['node']} using {index_plan['index']}"
        if index_plan["index"]
        else "not usable",
    )
    table.add_row(
        "search median (db)", f"{before['search_ms_p50']} ms", f"{after['search_ms_p50']} ms"
    )
    table.add_row("'bug fix' results", str(before["results"]), str(after["results"]))
    table.add_row("API search median", "-", f"{demo.report['api']['latency_ms_p50']} ms")
    if not demo.options.as_json:
        demo.console.print(table)


def show_try_it(demo: Demo) -> None:
    """The validation call as a ready curl line, with the demo's token."""
    if demo.options.as_json:
        return
    line = curl_example(demo.token, demo.report["api"]["url"])
    if demo.options.serve:
        demo.say("\nserving until Ctrl-C. Try (the demo's search-scope token):")
    else:
        demo.say("\nThe same call with the demo's token (`--serve` keeps the API up to answer it):")
    # soft_wrap: one line however narrow the terminal, so it can be pasted.
    demo.console.print(f"  {line}", soft_wrap=True, highlight=False, markup=False)


async def serve_forever(demo: Demo) -> None:
    while all(child.exited() is None for child in demo.children):
        await asyncio.sleep(0.5)


def dump_json(report: dict[str, Any]) -> str:
    return json.dumps(report, indent=2, default=str)
