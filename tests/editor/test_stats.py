"""Covariance statistics: where they are cached, and that a cached read is the computed result."""

from __future__ import annotations

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
