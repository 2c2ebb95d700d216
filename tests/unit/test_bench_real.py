"""The real-corpus benchmark's two measures of its data: the corpus lines it embeds, and the
local intrinsic dimension it compares with the generator's."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from bench.search_real import corpus_lines, local_intrinsic_dimension


@pytest.mark.parametrize("latent", [4, 16])
def test_local_intrinsic_dimension_finds_the_dimension_points_spread_in(latent: int) -> None:
    """Gaussian points in a `latent`-dimensional subspace of 384, as unit vectors (a sphere of
    latent - 1 dimensions): the estimate lands near latent - 1, whatever the width 384."""
    rng = np.random.default_rng(0)
    points = rng.standard_normal((4_000, latent)) @ rng.standard_normal((latent, 384))
    points /= np.linalg.norm(points, axis=1, keepdims=True)
    estimate = local_intrinsic_dimension(points.astype(np.float32))
    assert 0.7 * (latent - 1) < estimate < 1.3 * (latent - 1), estimate


def test_corpus_lines_are_distinct_prose_lines_in_a_fixed_shuffle(tmp_path: Path) -> None:
    prose = [f"line {word} of the manual says how the cursor moves here" for word in "abcdef"]
    (tmp_path / "a.txt").write_text(
        "\n".join([*prose[:3], "too short", "1234567890 " * 5, f"  {prose[0]}  ", "*" * 60])
    )
    (tmp_path / "b.txt").write_text("\n".join(prose[3:]))
    lines = corpus_lines(str(tmp_path / "*.txt"))
    assert sorted(lines) == sorted(prose)  # short, numeric, repeated and symbol lines left out
    assert lines == corpus_lines(str(tmp_path / "*.txt"))
