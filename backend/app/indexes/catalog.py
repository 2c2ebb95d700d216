"""The HNSW indexes the app relies on, and the SQL that tells whether one is as it should be.

The `add_vector_indexes` revision, `tasktracker status` and the tests all read this module, so
what "a valid index with the right definition" means is written once.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from app.models.base import hnsw_label, hnsw_params

HNSW_OPCLASS = "vector_cosine_ops"
# What pgvector builds with when the index names no parameter.
PGVECTOR_DEFAULTS = {"m": 16, "ef_construction": 64}
# An index's build note (its comment, app.indexes.build), over pg_class c.
NOTE_SQL = "obj_description(c.oid, 'pg_class')"
# The note names the graph's parameters (notes written before they did, and --sql builds, not).
NOTE_NAMES_A_GRAPH_SQL = f"""coalesce(strpos({NOTE_SQL}, '"graph": '), 0) > 0"""
HNSW_MIN_VECTOR_VERSION = "0.5.0"


@dataclass(frozen=True)
class VectorIndex:
    name: str
    table: str
    column: str = "embedding"
    opclass: str = HNSW_OPCLASS  # halfvec_cosine_ops for a halfvec space

    @property
    def create_sql(self) -> str:
        return self.create_statement(concurrently=True)

    @property
    def params(self) -> dict[str, int]:
        """m and ef_construction as the settings say now."""
        return hnsw_params()

    @property
    def graph(self) -> str:
        """The parameters as the build note keeps them: m=16, ef_construction=64."""
        return hnsw_label(self.params)

    def create_statement(self, *, concurrently: bool) -> str:
        params = self._with_params
        keyword = "CONCURRENTLY " if concurrently else ""
        return (
            f"CREATE INDEX {keyword}IF NOT EXISTS {self.name} ON {self.table} "
            f"USING hnsw ({self.column} {self.opclass}) WITH ({params})"
        )

    @property
    def drop_sql(self) -> str:
        return self.drop_statement(concurrently=True)

    def drop_statement(self, *, concurrently: bool) -> str:
        keyword = "CONCURRENTLY " if concurrently else ""
        return f"DROP INDEX {keyword}IF EXISTS {self.name}"

    @property
    def set_params_sql(self) -> str:
        """Give an existing index the settings' parameters (a REINDEX then builds with them)."""
        return f"ALTER INDEX {self.name} SET ({self._with_params})"

    @property
    def _with_params(self) -> str:
        return ", ".join(f"{key} = {value}" for key, value in self.params.items())

    def reindex_statement(self, *, concurrently: bool) -> str:
        keyword = "CONCURRENTLY " if concurrently else ""
        return f"REINDEX INDEX {keyword}{self.name}"

    @property
    def leftovers_sql(self) -> str:
        """SELECT yielding a DROP for each invalid copy a failed REINDEX CONCURRENTLY left."""
        return (
            "SELECT format('DROP INDEX CONCURRENTLY IF EXISTS %I.%I', n.nspname, c.relname) "
            "FROM pg_class c JOIN pg_index i ON i.indexrelid = c.oid "
            "JOIN pg_namespace n ON n.oid = c.relnamespace "
            f"WHERE n.nspname = current_schema() AND NOT i.indisvalid "
            f"AND c.relname ~ '^{self.name}_cc(new|old)[0-9]*$'"
        )

    @property
    def rows_sql(self) -> str:
        """The rows the index will hold (pgvector skips NULL vectors)."""
        return f"SELECT count(*) FROM {self.table} WHERE {self.column} IS NOT NULL"

    @property
    def dims_sql(self) -> str:
        """The column's declared dimensions (its type modifier)."""
        return (
            f"SELECT atttypmod FROM pg_attribute WHERE attrelid = '{self.table}'::regclass "
            f"AND attname = '{self.column}'"
        )

    @property
    def matches_sql(self) -> str:
        """A boolean SQL expression over pg_class c / pg_index i / pg_am am: index is right."""
        return f"{self.shape_sql} AND {self.params_sql}"

    @property
    def shape_sql(self) -> str:
        """Valid, HNSW, on the right column with the right opclass: right but for m and
        ef_construction, which ALTER INDEX ... SET and a REINDEX CONCURRENTLY can change."""
        return (
            f"i.indisvalid AND i.indisready AND am.amname = 'hnsw'"
            f" AND i.indrelid = '{self.table}'::regclass AND i.indnatts = 1"
            f" AND i.indkey[0] = (SELECT attnum FROM pg_attribute"
            f" WHERE attrelid = '{self.table}'::regclass AND attname = '{self.column}')"
            f" AND (SELECT opcname FROM pg_opclass WHERE oid = i.indclass[0]) = '{self.opclass}'"
            f" AND i.indpred IS NULL"
        )

    @property
    def params_sql(self) -> str:
        """The settings' m and ef_construction, both in the catalog and in the graph itself: the
        build note (the index's comment, app.indexes.build) names the parameters the graph was
        built with, which differ from the catalog's after an ALTER whose REINDEX did not finish."""
        options = ", ".join(f"'{key}={value}'" for key, value in self.params.items())
        return (
            f"(c.reloptions @> ARRAY[{options}]"
            f" AND cardinality(c.reloptions) = {len(self.params)}"
            f" AND (NOT {NOTE_NAMES_A_GRAPH_SQL}"
            f' OR strpos({NOTE_SQL}, \'"graph": "{self.graph}"\') > 0))'
        )

    @property
    def retune_sql(self) -> str:
        """SELECT true when this index is right but for its parameters."""
        return f"SELECT true {self._retunable}"

    @property
    def _retunable(self) -> str:
        """FROM and WHERE finding this index when it is right but for its parameters."""
        return f"{self._catalog} AND {self.shape_sql} AND NOT {self.params_sql}"

    @property
    def note_sql(self) -> str:
        """SELECT the index's parameters in the catalog and its build note (its comment)."""
        return f"SELECT c.reloptions, {NOTE_SQL} {self._catalog}"

    @property
    def retune_offline_sql(self) -> str:
        """For `alembic upgrade --sql`: a SELECT whose row, run by psql's \\gexec, gives an index
        that is right but for its parameters the settings' ones online (the steps of
        app.indexes.build's retune: the old graph named in the note when it is not yet, ALTER,
        REINDEX CONCURRENTLY, the new graph in the note). No row when nothing is to change."""
        done = json.dumps({"how": "REINDEX CONCURRENTLY", "graph": self.graph})
        return (
            f"SELECT CASE WHEN NOT {NOTE_NAMES_A_GRAPH_SQL} THEN format("
            "'COMMENT ON INDEX %I.%I IS %L', "
            f"n.nspname, c.relname, jsonb_build_object('graph', {GRAPH_OF_SQL})::text) END, "
            f"format('ALTER INDEX %I.%I SET ({self._with_params})', n.nspname, c.relname), "
            f"format('REINDEX INDEX CONCURRENTLY %I.%I', n.nspname, c.relname), "
            f"format('COMMENT ON INDEX %I.%I IS %L', n.nspname, c.relname, '{done}') "
            f"{self._retunable}"
        )

    @property
    def drop_if_wrong_sql(self) -> str:
        """SELECT yielding a DROP statement when an index of this name exists but is wrong."""
        return (
            "SELECT format('DROP INDEX CONCURRENTLY IF EXISTS %I.%I', n.nspname, c.relname) "
            f"{self._catalog} AND NOT ({self.matches_sql})"
        )

    @property
    def state_sql(self) -> str:
        """SELECT exists, valid, ready, right-definition for this index."""
        return f"SELECT {self._state_columns} {self._catalog}"

    @property
    def report_sql(self) -> str:
        """state_sql plus the index's size and the note of its last build (its comment)."""
        return f"SELECT {self._state_columns}, pg_relation_size(c.oid), {NOTE_SQL} {self._catalog}"

    @property
    def _state_columns(self) -> str:
        return (
            f"i.indisvalid, i.indisready, ({self.matches_sql}) AS matches, pg_get_indexdef(c.oid)"
        )

    @property
    def _catalog(self) -> str:
        """FROM and WHERE finding this index in the current schema."""
        return (
            "FROM pg_class c JOIN pg_index i ON i.indexrelid = c.oid "
            "JOIN pg_namespace n ON n.oid = c.relnamespace JOIN pg_am am ON am.oid = c.relam "
            f"WHERE c.relname = '{self.name}' AND n.nspname = current_schema()"
        )

    @property
    def progress_sql(self) -> str:
        """A build running on this index's table now: phase, counters, elapsed seconds."""
        return f"{PROGRESS_SELECT} WHERE p.relid = '{self.table}'::regclass"


# A build's progress: phase, tuples, blocks, lockers, seconds since its statement began.
PROGRESS_SELECT = (
    "SELECT p.phase, p.tuples_done, p.tuples_total, p.blocks_done, p.blocks_total, "
    "p.lockers_done, p.lockers_total, "
    "extract(epoch FROM clock_timestamp() - a.query_start)::float8 AS elapsed "
    "FROM pg_stat_progress_create_index p JOIN pg_stat_activity a ON a.pid = p.pid"
)


VECTOR_INDEXES = (
    VectorIndex("messages_embedding_hnsw_idx", "messages"),
    VectorIndex("atoms_embedding_hnsw_idx", "atoms"),
)

# The storage type of each entity's active space (embedding_spaces, revision 0005), so the
# repair after an upgrade checks a halfvec space's index against halfvec_cosine_ops.
ACTIVE_STORAGE_SQL = (
    "SELECT entity || ':' || storage FROM embedding_spaces WHERE state = 'active' "
    "AND to_regclass('embedding_spaces') IS NOT NULL"
)
SPACES_EXIST_SQL = "SELECT to_regclass('embedding_spaces') IS NOT NULL"


def build_note(comment: str | None) -> dict[str, Any]:
    """The note app.indexes.build keeps as an index's comment ({} if it was built elsewhere)."""
    if not comment:
        return {}
    try:
        note = json.loads(comment)
    except ValueError:
        return {}
    return note if isinstance(note, dict) else {}


def graph_of(reloptions: Sequence[str] | None) -> str:
    """The parameters an index's catalog names, as a build note writes them."""
    params = dict(PGVECTOR_DEFAULTS)
    for option in reloptions or ():
        key, _, value = option.partition("=")
        if key in params:
            params[key] = int(value)
    return hnsw_label(params)


def _reloption_sql(key: str) -> str:
    value = f"(SELECT split_part(o, '=', 2) FROM unnest(c.reloptions) o WHERE o LIKE '{key}=%')"
    return f"coalesce({value}, '{PGVECTOR_DEFAULTS[key]}')"


# graph_of in SQL, over pg_class c (for the --sql script, which has no Python at run time).
GRAPH_OF_SQL = (
    f"format('m=%s, ef_construction=%s', {_reloption_sql('m')}, "
    f"{_reloption_sql('ef_construction')})"
)


def active_vector_indexes(execute: Callable[[str], Sequence[Any]]) -> tuple[VectorIndex, ...]:
    """VECTOR_INDEXES with the opclass of each entity's active space."""
    if not execute(SPACES_EXIST_SQL)[0]:
        return VECTOR_INDEXES
    return indexes_for_storage(execute(ACTIVE_STORAGE_SQL))


def indexes_for_storage(rows: Iterable[Any]) -> tuple[VectorIndex, ...]:
    """VECTOR_INDEXES with the opclass of the storage in `rows` (ACTIVE_STORAGE_SQL's answer)."""
    storage = dict(str(row).split(":", 1) for row in rows)
    return tuple(
        replace(index, opclass=f"{storage.get(index.table, 'vector')}_cosine_ops")
        for index in VECTOR_INDEXES
    )


VECTOR_VERSION_CHECK_SQL = f"""
DO $$
DECLARE v text := (SELECT extversion FROM pg_extension WHERE extname = 'vector');
BEGIN
  IF v IS NULL THEN
    RAISE EXCEPTION 'the vector extension is not installed; run the initial revision first';
  END IF;
  IF string_to_array(v, '.')::int[] < string_to_array('{HNSW_MIN_VECTOR_VERSION}', '.')::int[] THEN
    RAISE EXCEPTION 'pgvector % has no HNSW indexes (needs >= {HNSW_MIN_VECTOR_VERSION}). Fix: install a newer pgvector and run ALTER EXTENSION vector UPDATE', v;
  END IF;
END $$
"""


def build_session_sql(
    maintenance_work_mem: str, parallel_workers: int, lock_timeout: str
) -> list[str]:
    """Settings for the building session only: fast and bounded, never queued forever."""
    return [
        f"SET maintenance_work_mem = '{maintenance_work_mem}'",
        f"SET max_parallel_maintenance_workers = {int(parallel_workers)}",
        f"SET lock_timeout = '{lock_timeout}'",
        "SET statement_timeout = 0",
    ]


RESET_SESSION_SQL = [
    f"RESET {name}"
    for name in (
        "maintenance_work_mem",
        "max_parallel_maintenance_workers",
        "lock_timeout",
        "statement_timeout",
    )
]


def ensure_vector_indexes(
    execute: Callable[[str], Sequence[str]], session_sql: Sequence[str]
) -> None:
    """Drop (CONCURRENTLY) each index that is invalid or wrongly defined, then create what is missing.

    `execute` runs one statement outside any transaction and returns the first column of its rows.
    """
    for statement in session_sql:
        execute(statement)
    for index in VECTOR_INDEXES:
        for statement in execute(index.retune_offline_sql):  # online: new parameters
            execute(statement)
        for drop in execute(index.drop_if_wrong_sql):
            execute(drop)
    for index in VECTOR_INDEXES:
        execute(index.create_sql)
    for statement in RESET_SESSION_SQL:
        execute(statement)
