"""The embedded server's shared_buffers: a quarter of the memory, bounded; and a wrong setting."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from app.core.config import Settings, settings_error
from app.core.errors import ConfigurationError
from app.core.pgmemory import cgroup_limit, shared_buffers

GIB = 1024**3


def test_auto_is_a_quarter_of_the_memory_between_128mb_and_8gb() -> None:
    assert shared_buffers("auto", memory=24 * GIB) == "6GB"
    assert shared_buffers("AUTO", memory=2 * GIB) == "512MB"
    assert shared_buffers("auto", memory=GIB // 4) == "128MB"  # the floor: Postgres' own default
    assert shared_buffers("auto", memory=256 * GIB) == "8GB"  # the ceiling
    assert shared_buffers("auto", memory=23 * GIB + 500 * 1024**2) == "6013MB"  # whole MB


def test_a_size_is_taken_as_written() -> None:
    assert shared_buffers("2GB") == "2GB"
    assert shared_buffers("512mb") == "512MB"
    with pytest.raises(ConfigurationError, match="512MB or 2GB"):
        shared_buffers("lots")


def test_a_container_limit_bounds_the_memory(tmp_path: Path) -> None:
    unlimited, limited, missing = tmp_path / "v2", tmp_path / "v1", tmp_path / "none"
    unlimited.write_text("max\n")
    limited.write_text(f"{2 * GIB}\n")
    assert cgroup_limit((missing, unlimited, limited)) == 2 * GIB
    assert cgroup_limit((missing, unlimited)) is None


def test_a_wrong_setting_is_named_as_its_variable_without_its_value() -> None:
    with pytest.raises(ValidationError) as caught:
        Settings(embedded_postgres_shared_buffers="lots of secret-ish text", hnsw_ef_search="x")  # type: ignore[arg-type]
    message = settings_error(caught.value).message
    assert "EMBEDDED_POSTGRES_SHARED_BUFFERS: must be auto or a size" in message
    assert "HNSW_EF_SEARCH: Input should be a valid integer" in message
    assert "secret-ish" not in message and "Fix:" in message


def test_a_graph_pgvector_would_refuse_is_named_before_any_build() -> None:
    with pytest.raises(ValidationError) as caught:
        Settings(index_hnsw_m=40, index_hnsw_ef_construction=64)
    message = settings_error(caught.value).message
    assert message.startswith("the settings are not valid (INDEX_HNSW_EF_CONSTRUCTION must be")
    assert "at least twice INDEX_HNSW_M" in message
