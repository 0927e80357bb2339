"""ROME: one rank-one update of one MLP output projection per edit.

W' = W + δ (C⁻¹k*)ᵀ / (k*ᵀ C⁻¹ k*), so W' k* = W k* + δ: the key k* now also writes δ, and keys
that C says the model uses elsewhere are disturbed as little as possible. k* is the key averaged over
context prefixes, used both for the direction C⁻¹k* and in the denominator; mixing the averaged key
with the plain-prompt key (as the original code did) gives a wrongly scaled update that can blow up.
By default the direction is not C⁻¹k* itself but the one of least dᵀCd that reads the subject's key in
every written context with gain close to 1 (`equal_gain_direction`, which tends to C⁻¹k*/(k*ᵀC⁻¹k*)
as its ridge grows), so one δ is written about equally wherever the subject stands.
Several edits are applied one after another, each computed on the model the previous ones left.

An edit that does not take at the subject (a fact the model reads from more than the subject's last
token) is computed again with its key at the prompt's last token, at a later layer
(`RomeParams.last_token_fallback`): that edit's patch then writes there instead.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Callable

import torch

from .adapters import Adapter
from .cov_solve import CovSolver, solver
from .keys import protected_context_keys, subject_keys, written_context_keys, written_paraphrase_keys
from .values import ValueParams, build_rows, optimise_values
from .weights import add_low_rank


@dataclass(frozen=True)
class RomeParams:
    # Value optimisation (values.ValueParams): δ added to the MLP output at the subject's last token until
    # the target is the answer. The clamp (clamp_norm × the norm of the reference) bounds δ; its
    # reference is the residual stream here, because in a small RMSNorm model the MLP output is a small
    # share of it and a clamp relative to the MLP output stops edits from taking (the published ROME
    # clamps at 4 × the MLP output). An edit stops early once it says the target and its essence prompt
    # has moved less than `early_stop_kl`; keep prompts are KL anchors weighted by `anchor_kl_factor`.
    # These are factpatch's settings, measured on the fixture; a model's file in editor/hparams (the
    # paper's settings) replaces the fields it names (pipeline.with_model_defaults).
    value: ValueParams = field(default_factory=lambda: ValueParams(lr=1.0, weight_decay=0.1, clamp_norm=4.0, norm_ref="residual",
                                                                  steps=80, early_stop_kl=0.05, anchor_kl_factor=0.25))
    # Context prefixes k* is averaged over (ROME reads the key behind several short generated texts).
    n_prefixes: int = 6
    # k* also averages the subject's key in each of the edit's written paraphrases: the key depends on
    # the words before the subject, and fitted to the prompt alone it reads other phrasings with a gain
    # away from 1.
    paraphrase_keys: bool = True
    # The update's input direction reads every context the edit is written in with gain close to 1
    # (equal_gain_direction), not only their average k*. The ridge, relative to the mean gain's scale,
    # trades equal gains for the update's reach into other keys (dᵀCd). None: ROME's C⁻¹k*.
    equal_gain_ridge: float | None = 0.1
    # An edit that has not taken after `value.steps` (is_stuck: δ rates its target below
    # e^-retry_above_nll, or its bare prompt does not say it) is optimised again from zero with the
    # smaller step `retry_lr` for `retry_steps`, and the better of the two kept (is_better; a large step
    # can oscillate on a few edits). None: no second pass.
    retry_lr: float | None = 0.2
    retry_steps: int = 200
    retry_above_nll: float = 1.0
    # Whether an edit whose prompt, asked bare, does not say the target greedily also counts as not taken:
    # it can rate its target well on average over its phrasings and contexts and still not answer it.
    retry_on_prompt: bool = True
    # Not part of ROME. When on, an edit that has still not taken after both passes is written again
    # from zero with its key at the prompt's last token, at `fallback_layer` (None: two thirds of the
    # depth), keeping the better of the two; the manifest names each edit written so. None: the model's
    # settings decide (model_defaults: on for the fixture, whose subject-last prompts a subject's value
    # sometimes cannot move; off for a published model, as in the paper).
    last_token_fallback: bool | None = None
    fallback_layer: int | None = None
    # The value settings of that last-token pass (None: `value`'s).
    fallback_value: ValueParams | None = None
    # A key at the prompt's last token reads the question more than the subject: asked of a neighbour it
    # lies close to the edit's own. A write there is also held to gain ≈ 0 on the edit's phrasings and
    # keep prompts asked of its neighbours and on its keep prompts (equal_gain_direction's protected
    # rows). Subject keys are not. `protected_ridge` is their ridge (a share of the key scale, like
    # equal_gain_ridge): smaller holds them closer to 0 for more of the update's reach dᵀCd
    # (bench/results/editor_tuning.md, "Last-token writes held off the neighbours").
    protect_at_last_token: bool = True
    protected_ridge: float = 0.001

    def __post_init__(self) -> None:
        if self.equal_gain_ridge is not None and not self.equal_gain_ridge > 0:
            raise ValueError(f"equal_gain_ridge must be positive (or None for C⁻¹k*), got {self.equal_gain_ridge!r}")
        if not self.protected_ridge > 0:
            raise ValueError(f"protected_ridge must be positive, got {self.protected_ridge!r}")
        if self.retry_lr is not None and not (self.retry_lr > 0 and self.retry_steps > 0 and self.retry_above_nll > 0):
            raise ValueError(f"retry_lr, retry_steps and retry_above_nll must be positive, got "
                             f"{self.retry_lr!r}, {self.retry_steps!r}, {self.retry_above_nll!r}")

    def late_layer(self, n_layers: int, editable: list[int] | None = None, edits=()) -> int | None:
        """The layer the last-token fallback writes (None when it is off)."""
        return fallback_layer(bool(self.last_token_fallback), self.fallback_layer, n_layers, editable)

    def is_stuck(self, nll, prompt_missed) -> bool:
        """Whether an edit has not taken: its mean NLL above retry_above_nll, or (retry_on_prompt) its
        bare prompt not saying the target greedily (`prompt_missed` target tokens not the most probable)."""
        return float(nll) > self.retry_above_nll or (self.retry_on_prompt and float(prompt_missed) > 0)

    def is_better(self, nll, prompt_missed, than_nll, than_prompt_missed) -> torch.Tensor:
        """[n] bool: whether each new pass beats the δ kept so far: one that has taken beats one that has
        not, and between two alike the lower mean NLL wins."""
        takes = torch.tensor([not self.is_stuck(a, b) for a, b in zip(nll, prompt_missed)], dtype=torch.bool)
        took = torch.tensor([not self.is_stuck(a, b) for a, b in zip(than_nll, than_prompt_missed)], dtype=torch.bool)
        return (takes & ~took) | ((takes == took) & (torch.as_tensor(nll) < torch.as_tensor(than_nll)))

    @property
    def retry_value(self) -> ValueParams:
        """The value settings of the second pass: the first's, with the smaller step and more steps."""
        return replace(self.value, lr=self.retry_lr, steps=self.retry_steps)


def fallback_layer(enabled: bool, chosen: int | None, n_layers: int, editable: list[int] | None = None) -> int | None:
    """Where a last-token write goes: the chosen layer, else two thirds of the depth, where the prompt's
    last token already holds what it asks about the subject; with `editable` (the layers whose MLP is
    not held at zero) the nearest of those at or below it, or the lowest above it if none is below."""
    if not enabled:
        return None
    if chosen is not None:
        return chosen
    layer = (2 * n_layers) // 3
    if editable:
        below = [l for l in editable if l <= layer]
        layer = max(below) if below else min(editable)
    return layer


def input_direction(key: torch.Tensor, cov: torch.Tensor | CovSolver) -> torch.Tensor:
    """C⁻¹k*/(k*ᵀC⁻¹k*) in float64: W += δ ⊗ this writes exactly δ at k* and as little as C allows elsewhere."""
    ck = solver(cov)(key)
    return ck / (key.to(torch.float64) @ ck)


def equal_gain_direction(keys: torch.Tensor, cov: torch.Tensor | CovSolver, ridge: float,
                         protected: torch.Tensor | None = None, protected_ridge: float | None = None) -> torch.Tensor:
    """The direction d of least dᵀCd that reads every row of `keys` ([rows, key_dim], one per context) with
    gain k·d close to 1, and every row of `protected` (contexts to leave alone) with gain close to 0, in
    float64: d = C⁻¹Aᵀ(AC⁻¹Aᵀ + P)⁻¹g with A the rows of both, g their gains (1s, then 0s), and P diagonal:
    `ridge` (for `keys`) or `protected_ridge` (default `ridge`; for `protected`) times the mean diagonal
    of KC⁻¹Kᵀ over `keys`. Scaled so the mean gain on `keys` is exactly 1. Ridges → 0: every gain as
    asked; ridge → ∞ without protected rows: ROME's C⁻¹k̄/(k̄ᵀC⁻¹k̄)."""
    k = keys.to(torch.float64)
    rows = k.shape[0]
    a = k if protected is None or not len(protected) else torch.cat([k, protected.to(torch.float64)])
    cia = solver(cov)(a.T)  # C⁻¹Aᵀ [key_dim, rows of A]
    gram = a @ cia
    scale = torch.trace(gram[:rows, :rows]) / rows
    ridges = torch.full((a.shape[0],), ridge if protected_ridge is None else protected_ridge, dtype=gram.dtype)
    ridges[:rows] = ridge
    gains = torch.zeros(a.shape[0], dtype=gram.dtype)
    gains[:rows] = 1.0
    weights = torch.linalg.solve(gram + torch.diag(ridges * scale), gains)
    d = cia @ weights
    return d / (k @ d).mean()


def rank_one_factors(delta: torch.Tensor, direction: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(u [d,1], v [k,1]) float32 with u vᵀ = δ ⊗ direction, v of unit norm (computed in float64)."""
    direction = direction.to(torch.float64)
    scale = direction.norm()
    return (delta.to(torch.float64) * scale)[:, None].to(torch.float32), (direction / scale)[:, None].to(torch.float32)


def rank_one(delta: torch.Tensor, key: torch.Tensor, cov: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(u [d,1], v [k,1]) float32 with u vᵀ k = δ and v ∝ C⁻¹k."""
    return rank_one_factors(delta, input_direction(key, cov))


def paraphrase_averaged_keys(adapter, tok, layer: int, edits, keys: torch.Tensor, n_prefixes: int) -> torch.Tensor:
    """k* over the prompt's contexts (`keys`, averaged over `n_prefixes`) and the edit's written
    paraphrases together, each row counted once; an edit without paraphrases keeps its `keys` row."""
    extra, owner = written_paraphrase_keys(adapter, tok, layer, edits)
    if not len(owner):
        return keys
    total = (keys * n_prefixes).index_add(0, owner, extra)
    count = torch.full((len(edits),), float(n_prefixes), dtype=keys.dtype).index_add(0, owner, torch.ones(len(owner), dtype=keys.dtype))
    return total / count[:, None]


def edit_directions(adapter, tok, layer: int, edits, cov: torch.Tensor | CovSolver, prefixes: list[str], hp: RomeParams,
                    at: str = "subject") -> list[torch.Tensor]:
    """Each edit's input direction (float64): through every written context's key (equal_gain_ridge), or
    C⁻¹k* with k* averaged over the prefixes and, with paraphrase_keys, the written paraphrases. Keys at
    the prompt's last token (at="last") always take the equal-gain direction (the default ridge when unset).
    C is factorised once for all of them (cov_solve)."""
    cov = solver(cov)
    if hp.equal_gain_ridge is not None or at != "subject":
        if not hp.paraphrase_keys:
            edits = [e.model_copy(update={"paraphrases": []}) for e in edits]
        rows = written_context_keys(adapter, tok, layer, edits, prefixes, at=at)
        ridge = hp.equal_gain_ridge or RomeParams.equal_gain_ridge
        if at == "last" and hp.protect_at_last_token:
            held = protected_context_keys(adapter, tok, layer, edits, at=at)
            return [equal_gain_direction(r, cov, ridge, p, hp.protected_ridge) for r, p in zip(rows, held)]
        return [equal_gain_direction(r, cov, ridge) for r in rows]
    keys = subject_keys(adapter, tok, layer, edits, prefixes)
    if hp.paraphrase_keys:
        keys = paraphrase_averaged_keys(adapter, tok, layer, edits, keys, len(prefixes))
    return [input_direction(k, cov) for k in keys]


def apply_rome(
    adapter: Adapter,
    tok,
    edits,
    layer: int,
    cov: torch.Tensor | CovSolver,
    prefixes: list[str],
    hp: RomeParams,
    on_edit: Callable[[int, dict], None] | None = None,
    late: tuple[int, torch.Tensor | CovSolver] | None = None,
    at: str = "subject",
) -> tuple[dict[int, tuple[torch.Tensor, torch.Tensor]], list[dict]]:
    """Apply the edits in order to the live model; returns per layer written the stacked factors
    (u [d,n], v [k,n]) and a record per edit. `at`: where the keys are read (see independent_edits).
    Each C is factorised once for all the edits (held between them: d² float64 a layer)."""
    if len(edits) > 1:
        cov = solver(cov)
        if late is not None:
            late = (late[0], solver(late[1]))
    us: dict[int, list[torch.Tensor]] = {}
    vs: dict[int, list[torch.Tensor]] = {}
    info = []
    for i, e in enumerate(edits):
        # Each edit is computed on the model the previous ones left, then written before the next.
        [written], [rec] = independent_edits(adapter, tok, [e], layer, cov, prefixes, hp, late=late, at=at)
        for l, (u, v) in written.items():
            add_low_rank(adapter, l, u, v)
            us.setdefault(l, []).append(u)
            vs.setdefault(l, []).append(v)
        info.append(rec)
        if on_edit:
            on_edit(i, rec)
    return {l: (torch.cat(us[l], 1), torch.cat(vs[l], 1)) for l in sorted(us)}, info


def independent_edits(
    adapter: Adapter,
    tok,
    edits,
    layer: int,
    cov: torch.Tensor | CovSolver,
    prefixes: list[str],
    hp: RomeParams,
    on_progress: Callable[[str, int, int], None] | None = None,
    late: tuple[int, torch.Tensor | CovSolver] | None = None,
    at: str = "subject",
) -> tuple[list[dict[int, tuple[torch.Tensor, torch.Tensor]]], list[dict]]:
    """Each edit alone on the model as it is now, all optimised in one batch: {layer: (u [d,1], v [k,1])}
    and a record per edit. Nothing is written. `late` (layer, its covariance) is where the last-token
    fallback writes the edits that take at neither pass; None: no fallback. at="last" reads every key
    at the prompt's last token from the start (MEMIT's fallback for the edits its batch did not take).

    Every row sees only its own edit's rank-one update, and Adam, decay, clamp and stopping act per row,
    so each result is the edit computed by itself, in one pass over the batch instead of one per edit
    (`apply_rome` calls it with one edit at a time; single edits from the base take them all at once)."""
    rows = [build_rows(tok, e.prompt, e.subject, e.target_new, prefixes, keep=e.keep, paraphrases=e.paraphrases,
                       neighbours=e.neighbours) for e in edits]
    # The update's input direction is fixed by the keys and C alone, so δ can be optimised through it.
    directions = torch.stack(edit_directions(adapter, tok, layer, edits, cov, prefixes, hp, at=at))

    def run(value: ValueParams, which: list[int], stage: str, at_layer: int = layer, through: torch.Tensor = directions):
        return optimise_values(adapter, tok, at_layer, [rows[i] for i in which], value,
                               directions=through[which].to(torch.float32),
                               progress=(lambda s, t, a: on_progress(stage, s, t)) if on_progress else None)

    everyone = list(range(len(edits)))
    res = run(hp.value, everyone, "values")
    deltas, nll, kl, steps = res.deltas.clone(), res.final_nll.clone(), res.final_kl.clone(), res.steps_taken.clone()
    missed = res.final_prompt_missed.clone()
    second_pass = torch.zeros(len(edits), dtype=torch.bool)  # the δ kept is the second pass's
    stuck = [i for i in everyone if hp.is_stuck(nll[i], missed[i])] if hp.retry_lr is not None else []
    if stuck:
        again = run(hp.retry_value, stuck, "values-retry")
        better = hp.is_better(again.final_nll, again.final_prompt_missed, nll[stuck], missed[stuck])
        kept = torch.tensor(stuck)[better]
        deltas[kept], nll[kept], kl[kept], steps[kept], missed[kept] = (
            again.deltas[better], again.final_nll[better], again.final_kl[better], again.steps_taken[better],
            again.final_prompt_missed[better])
        second_pass[kept] = True
    factors = [{layer: rank_one_factors(deltas[i], directions[i])} for i in everyone]
    key_at = [at] * len(edits)
    subject_nll = nll.clone()  # the best the subject's key reached, kept for the record
    subject_missed = missed.clone()
    stuck = [i for i in everyone if hp.is_stuck(nll[i], missed[i])] if late is not None else []
    if stuck:
        at_layer, late_cov = late
        late_cov = solver(late_cov)
        late_dirs = torch.zeros(len(edits), late_cov.dim, dtype=torch.float64)
        late_dirs[stuck] = torch.stack(edit_directions(adapter, tok, at_layer, [edits[i] for i in stuck], late_cov, prefixes, hp, at="last"))
        last = run(hp.fallback_value or hp.value, stuck, "values-last-token", at_layer, late_dirs)
        better = hp.is_better(last.final_nll, last.final_prompt_missed, nll[stuck], missed[stuck])
        for j, i in enumerate(stuck):
            if bool(better[j]):
                deltas[i], nll[i], kl[i], steps[i] = last.deltas[j], last.final_nll[j], last.final_kl[j], last.steps_taken[j]
                missed[i] = last.final_prompt_missed[j]
                factors[i] = {at_layer: rank_one_factors(deltas[i], late_dirs[i])}
                key_at[i], second_pass[i] = "last", False
    info = [{"nll": float(nll[i]), "kl": float(kl[i]), "steps": int(steps[i]), "delta_norm": float(deltas[i].norm()),
             "second_pass": bool(second_pass[i]), "layer": next(iter(factors[i])), "key_at": key_at[i],
             "subject_nll": float(subject_nll[i]), "prompt_missed": int(missed[i]),
             "subject_prompt_missed": int(subject_missed[i])} for i in everyone]
    return factors, info
