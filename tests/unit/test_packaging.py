"""What ships: the wheel and the image carry the product (backend/app), no benchmark or test code."""

from __future__ import annotations

import re
import shutil
import subprocess
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DEV_ONLY = ("bench/", "testkit/", "tests/")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    uv = shutil.which("uv")
    if uv is None:
        pytest.skip("uv is not on PATH: the wheel cannot be built here")
    out = tmp_path_factory.mktemp("dist")
    built = subprocess.run(
        [uv, "build", "--wheel", "--out-dir", str(out), str(REPO)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert built.returncode == 0, built.stderr
    (path,) = out.glob("tasktracker-*.whl")
    return path


def test_the_wheel_holds_the_product_package_and_its_metadata_only(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    tops = {name.split("/", 1)[0] for name in names}
    assert tops == {"app", next(t for t in tops if t.endswith(".dist-info"))}, sorted(tops)
    assert not [n for n in names if n.startswith(DEV_ONLY) or "/bench/" in n or "/stubs/" in n]
    assert "app/main.py" in names and "app/embedding/embedding_service.py" in names
    assert "app/console/templates/base.html" in names  # the console's pages ship with it


def test_the_wheel_entry_point_is_the_cli_package(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        (entry,) = [n for n in archive.namelist() if n.endswith("entry_points.txt")]
        text = archive.read(entry).decode()
    assert "tasktracker = app.cli.main:main" in text
    assert "bench" not in text  # the benchmarks register only in a development checkout


def test_the_image_copies_only_the_project_files_and_backend() -> None:
    dockerfile = (REPO / "Dockerfile").read_text()
    sources = set()
    for line in dockerfile.splitlines():
        if line.startswith("COPY") and "--from=" not in line:
            sources.update(line.split()[1:-1])
    assert sources == {"pyproject.toml", "uv.lock", "README.md", "backend"}, sources
    assert not re.search(r"\b(bench|testkit|tests)\b", "\n".join(sources))


def test_no_benchmark_or_test_code_lives_under_backend() -> None:
    inside = [p for p in (REPO / "backend").rglob("*") if p.name in {"bench", "tests", "stubs"}]
    assert inside == []
