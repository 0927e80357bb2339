"""The value optimisation within a memory budget: passes hold at most the budget's tokens, the δ found is
the one found in one pass (gradients accumulate exactly), and the budget reaches every value setting."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from factpatch.editor.memit import MemitParams
from factpatch.editor.memory import (
    DEFAULT_BUDGET_FLOOR,
    activation_bytes_per_token,
    default_budget,
    model_bytes,
    tokens_per_pass,
)
from factpatch.editor.pipeline import EditOptions, with_memory_budget
from factpatch.editor.prompts import context_prefixes
from factpatch.editor.rome import RomeParams
from factpatch.editor.values import ValueParams, _length_chunks, _RowTable, build_rows, optimise_values

from .conftest import fixture_edits, rome_layer


def _rows(loaded, world, n: int):
    prefixes = context_prefixes(loaded.adapter.model, loaded.tok, 4)
    return [build_rows(loaded.tok, e.prompt, e.subject, e.target_new, prefixes) for e in fixture_edits(world, n, seed=41)]


def test_passes_hold_at_most_the_budgets_tokens(loaded, world):
    rows = _RowTable.build(_rows(loaded, world, 12), None, "answer").rows
    longest = max(len(r.ids) for r in rows)
    for budget in (1, longest, 3 * longest, 40 * longest):
        chunks = _length_chunks(rows, 2048, budget)
        assert [s for s, _ in chunks] == [0, *[e for _, e in chunks[:-1]]] and chunks[-1][1] == len(rows)
        for s, e in chunks:
            padded = (e - s) * max(len(r.ids) for r in rows[s:e])
            assert padded <= budget or e - s == 1  # one row a pass at least, whatever its length
    assert len(_length_chunks(rows, 2048, longest)) > len(_length_chunks(rows, 2048, 40 * longest))


def test_the_values_are_those_of_unbounded_passes(loaded, world):
    per_edit = _rows(loaded, world, 3)
    hp = dataclasses.replace(RomeParams().value, steps=8, early_stop_nll=0.0, early_stop_kl=None)
    whole = optimise_values(loaded.adapter, loaded.tok, rome_layer(loaded), per_edit, hp)
    small = optimise_values(loaded.adapter, loaded.tok, rome_layer(loaded), per_edit,
                            dataclasses.replace(hp, max_tokens_per_pass=40))
    assert torch.allclose(small.deltas, whole.deltas, rtol=1e-3, atol=1e-3 * float(whole.deltas.norm(dim=-1).max()))
    assert torch.allclose(small.final_nll, whole.final_nll, rtol=1e-3, atol=1e-4)


def test_activations_per_token_grow_with_the_layers_above(loaded):
    editable = loaded.adapter.editable_layers()
    low, high = activation_bytes_per_token(loaded.adapter, editable[0]), activation_bytes_per_token(loaded.adapter, editable[-1])
    assert low > high > 0
    # at least the residual stream of every block above is kept, in float32
    assert high >= 4 * loaded.adapter.hidden_dim() * (loaded.adapter.n_layers - editable[-1])
    assert tokens_per_pass(low, int(100.5 * low)) == 100
    with pytest.raises(ValueError, match="memory budget"):
        tokens_per_pass(low, 0)


def test_the_budget_reaches_every_value_setting(loaded):
    layer = rome_layer(loaded)
    opts = EditOptions(memory_budget=2**20, memit=dataclasses.replace(MemitParams.joint(), retry_value=ValueParams()),
                       rome=dataclasses.replace(RomeParams(), fallback_value=ValueParams()))
    capped = with_memory_budget(opts, loaded.adapter, [layer, layer + 1])
    tokens = tokens_per_pass(activation_bytes_per_token(loaded.adapter, layer), 2**20)
    for value in (capped.rome.value, capped.rome.fallback_value, capped.memit.value, capped.memit.retry_value):
        assert value.max_tokens_per_pass == tokens
    assert with_memory_budget(EditOptions(memory_budget="none"), loaded.adapter, [layer]) == EditOptions(memory_budget="none")
    with pytest.raises(ValueError, match="memory_budget must be bytes"):
        with_memory_budget(EditOptions(memory_budget="lots"), loaded.adapter, [layer])
    with pytest.raises(ValueError, match="max_tokens_per_pass"):
        ValueParams(max_tokens_per_pass=0)


def test_keys_and_residuals_read_in_budgeted_passes_are_the_same(loaded, world):
    from factpatch.editor.keys import keys_of_rows, residuals_of_rows
    from factpatch.editor.prompts import row_chunks

    rows = [r for er in _rows(loaded, world, 6) for r in er.rewrite]  # not sorted: lengths vary along
    assert len({len(r.ids) for r in rows}) > 1
    for s, e in row_chunks(rows, 2048, 30):
        assert (e - s) * max(len(r.ids) for r in rows[s:e]) <= 30 or e - s == 1
    layer = rome_layer(loaded)
    for read in (keys_of_rows, residuals_of_rows):
        whole, small = read(loaded.adapter, loaded.tok, layer, rows), read(loaded.adapter, loaded.tok, layer, rows, max_tokens=30)
        assert torch.allclose(small, whole, rtol=1e-4, atol=1e-5 * float(whole.abs().max()))


def test_an_edit_given_no_budget_takes_a_tenth_of_the_model_at_least_the_floor(loaded):
    """The default bounds every batch: the fixture is far smaller than the floor, so it gets the floor; a
    model ten times the floor's size gets a tenth of itself."""
    layer = rome_layer(loaded)
    n_bytes = model_bytes(loaded.model)
    assert n_bytes == sum(p.numel() * p.element_size() for p in loaded.model.parameters()) + sum(
        b.numel() * b.element_size() for b in loaded.model.buffers())
    assert n_bytes < 10 * DEFAULT_BUDGET_FLOOR and default_budget(loaded.model) == DEFAULT_BUDGET_FLOOR
    big = torch.nn.Linear(1, 20 * DEFAULT_BUDGET_FLOOR // 4, bias=False, device="meta")  # float32: 20 floors, none allocated
    assert default_budget(big) == 2 * DEFAULT_BUDGET_FLOOR
    capped = with_memory_budget(EditOptions(), loaded.adapter, [layer])
    tokens = tokens_per_pass(activation_bytes_per_token(loaded.adapter, layer), DEFAULT_BUDGET_FLOOR)
    assert capped.rome.value.max_tokens_per_pass == capped.memit.value.max_tokens_per_pass == tokens
