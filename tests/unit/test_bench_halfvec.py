"""The halfvec-at-scale benchmark streams the clustered vectors and ranks them chunk by chunk:
its exact neighbours must be numpy's exact neighbours of the whole matrix, and its chunks must
come from the search section's distribution."""

from __future__ import annotations

import numpy as np

from bench import search as base
from bench import search_scale as scale
from bench.search_halfvec import Stream, TopK


def test_chunked_top_k_is_the_exact_top_k_of_the_whole_matrix() -> None:
    stream = Stream(64, seed=5)
    queries = stream.draw(30)
    chunks = [stream.draw(n) for n in (700, 1, 300, 999)]
    top = TopK(queries, base.K)
    first = 0
    for chunk in chunks:
        top.add(chunk, first)
        first += len(chunk)
    whole = np.concatenate(chunks)
    assert top.ids.shape == (30, base.K)
    assert (top.ids == base.exact_top(queries, whole)).all()


def test_streamed_rows_have_the_search_sections_neighbour_contrast() -> None:
    stream = Stream(384, seed=3)
    rows = np.concatenate([stream.draw(2_500) for _ in range(4)])
    streamed = base.Dataset(rows, stream.draw(50), np.zeros(0), np.zeros(0))
    reference = base.make_dataset(10_000, 384, 50)
    ours = base.neighbour_contrast(streamed, base.exact_top(streamed.queries, streamed.rows))
    theirs = base.neighbour_contrast(reference, base.exact_top(reference.queries, reference.rows))
    for key in ("nn1_similarity", "nn10_similarity", "random_similarity"):
        assert abs(ours[key] - theirs[key]) < 0.03, (key, ours, theirs)
    assert np.allclose(np.linalg.norm(rows, axis=1), 1.0, atol=1e-4)


def test_hits_histogram_separates_whole_misses_from_thin_ones() -> None:
    truth = np.array([[1, 2, 3], [4, 5, 6], [7, 8, 9]])
    found = [[1, 2, 3], [4, 5, 0], [10, 11, 12]]
    assert scale.hits_histogram(found, truth) == {"0": 1, "2": 1, "3": 1}


def test_a_run_with_tuned_graph_settings_says_so_and_a_default_run_does_not() -> None:
    defaults = {"hnsw_m": 16, "hnsw_ef_construction": 64, "ef_search_default": 100}
    assert scale._tuned(defaults) == ""
    tuned = scale._tuned({**defaults, "hnsw_ef_construction": 256, "ef_search_default": 128})
    assert tuned.startswith(
        "**Tuned settings: INDEX_HNSW_EF_CONSTRUCTION=256, HNSW_EF_SEARCH=128.**"
    )
    assert "INDEX_HNSW_M" not in tuned
