"""Covariance statistics: where they are cached, and that a cached read is the computed result."""

from __future__ import annotations

import pytest
import torch

from factpatch.editor.corpus import fixture_corpus
from factpatch.editor.stats import model_fingerprint, second_moments, stats_path


def test_stats_cache_folder_moves_alone(loaded, world, tmp_path, monkeypatch):
    corpus = fixture_corpus(world)
    monkeypatch.setenv("FACTPATCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("FACTPATCH_STATS_CACHE", raising=False)
    assert stats_path("sha256:ab", "w", corpus, 8, 32).is_relative_to(tmp_path / "cache" / "stats")

    monkeypatch.setenv("FACTPATCH_STATS_CACHE", str(tmp_path / "big-disk"))
    path = stats_path("sha256:ab", "w", corpus, 8, 32)
    assert path.is_relative_to(tmp_path / "big-disk") and not path.is_relative_to(tmp_path / "cache")


def test_cached_statistics_are_the_computed_ones(loaded, world, tmp_path, monkeypatch):
    monkeypatch.setenv("FACTPATCH_STATS_CACHE", str(tmp_path / "stats"))
    corpus = fixture_corpus(world)
    fp = model_fingerprint(loaded.model)
    first = second_moments(loaded.adapter, loaded.tok, [0], corpus, n_samples=32, max_len=32, fingerprint=fp)
    path = stats_path(fp, loaded.adapter.param_name(0), corpus, 32, 32)
    assert path.exists()
    again = second_moments(loaded.adapter, loaded.tok, [0], corpus, n_samples=32, max_len=32, fingerprint=fp)
    assert torch.equal(first[0], again[0])
    # C = E[k kᵀ] is symmetric positive semi-definite
    c = first[0]
    assert torch.allclose(c, c.T) and torch.linalg.eigvalsh(c).min() > -1e-9
    # more samples are another cache entry, not a stale read of this one
    assert stats_path(fp, loaded.adapter.param_name(0), corpus, 64, 32) != path


def test_a_copy_for_the_solve_is_the_cached_matrix_and_its_own(loaded, world, tmp_path, monkeypatch):
    """`fresh` reads C into memory of its own (a solve may overwrite it); the next read is unchanged."""
    from factpatch.editor.memit import held_gram

    monkeypatch.setenv("FACTPATCH_STATS_CACHE", str(tmp_path / "stats"))
    corpus = fixture_corpus(world)
    layer = loaded.adapter.editable_layers()[0]
    moments = second_moments(loaded.adapter, loaded.tok, [layer], corpus, n_samples=32, max_len=32, fingerprint="sha256:cd")
    c = moments[layer]
    own = moments.fresh(layer)
    assert own.dtype == torch.float64 and torch.equal(own, c) and own.data_ptr() != c.data_ptr()
    held = torch.randn(3, c.shape[0], dtype=torch.float64)
    expected = 7.0 * c + 2.0 * held.T @ held
    a = held_gram(own, 7.0, held, 2.0, overwrite_cov=True)
    assert a.data_ptr() == own.data_ptr() and torch.allclose(a, expected)
    assert torch.equal(moments[layer], c) and torch.equal(moments.fresh(layer), c)  # the cache is untouched
    # without overwrite_cov, the caller's C stays as it was
    c2 = moments.fresh(layer)
    held_gram(c2, 7.0, None, 0.0)
    assert torch.equal(c2, c)


def test_statistics_deleted_during_an_edit_are_named(loaded, world, tmp_path, monkeypatch):
    monkeypatch.setenv("FACTPATCH_STATS_CACHE", str(tmp_path / "stats"))
    layer = loaded.adapter.editable_layers()[0]
    moments = second_moments(loaded.adapter, loaded.tok, [layer], fixture_corpus(world), n_samples=32, max_len=32,
                             fingerprint="sha256:ef")
    path = stats_path("sha256:ef", loaded.adapter.param_name(layer), fixture_corpus(world), 32, 32)
    path.unlink()
    with pytest.raises(FileNotFoundError, match=f"layer {layer}.*deleted during the edit"):
        moments.fresh(layer)


def test_uncached_statistics_are_held_and_copied_for_a_solve(loaded, world, tmp_path, monkeypatch):
    monkeypatch.setenv("FACTPATCH_STATS_CACHE", str(tmp_path / "stats"))
    layer = loaded.adapter.editable_layers()[0]
    moments = second_moments(loaded.adapter, loaded.tok, [layer], fixture_corpus(world), n_samples=32, max_len=32,
                             fingerprint="sha256:01", use_cache=False)
    assert not (tmp_path / "stats").exists()
    own = moments.fresh(layer)
    own.zero_()
    assert moments[layer].abs().sum() > 0
