"""MEMIT: many edits at once, spread over several layers' MLP output projections.

For each subject a residual change δ is found at the last critical layer L (batched value
optimisation). Edits of the same subject share one δ, optimised on all their prompts together: in a
prompt such as "{} ships same-day orders placed before" the subject's key is the same whatever the
relation, so separate targets for one key would be averaged by the solve and none would take.
Then, layer by layer from the lowest, the remaining gap R = z − h_L (divided by the number of layers
still to edit) is written with Δ = R Kᵀ (λC + K Kᵀ)⁻¹, solved in float64, with one row of K and R per
(edit, context prefix) so the edit holds in each context rather than only for the averaged key.
Keys and h_L are recomputed after every layer, because each update changes what the layers above see.

With `through_update` (`--joint`, one layer) the directions of that solve are computed first and the
whole batch's δ is optimised through the update it will be written with (`_apply_joint`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Callable

import torch

from .adapters import Adapter
from .keys import (
    keys_of_rows,
    residuals_of_rows,
    subject_keys,
    subject_keys_each,
    written_paraphrase_keys,
    written_rows,
)
from .memory import release_freed_memory
from .prompts import TokenizationError, encode
from .rome import RomeParams, apply_rome, fallback_layer
from .scoring import score_targets
from .values import EditRows, ValueParams, build_rows, optimise_values
from .weights import add_low_rank, concat_ranks


@dataclass(frozen=True)
class MemitParams:
    # Value optimisation at the last edited layer (values.ValueParams); the clamp is relative to the
    # residual stream, as in the published MEMIT (which clamps at 0.75 × it). `kl_factor` weighs the
    # essence prompt's KL (the published 0.0625); anchors are read from the subject on.
    # factpatch's settings, measured on the fixture; a model's file in editor/hparams replaces the
    # fields it names (pipeline.with_model_defaults).
    value: ValueParams = field(default_factory=lambda: ValueParams(lr=1.0, weight_decay=0.1, clamp_norm=3.0, kl_factor=0.0625, norm_ref="residual", steps=40,
                                                                  anchor_at="all"))
    n_prefixes: int = 5
    # λ: how much the corpus keys' covariance weighs against the new keys in the solve. A model's
    # published value (editor/hparams) replaces it.
    mom2_weight: float = 10000.0
    # "mean": one key row per edit, averaged over the context prefixes (MEMIT as published);
    # "each": one row per phrasing the edit is written in (its prompt behind every prefix, each
    # paraphrase), so the solve must write the edit in every one of them.
    key_rows: str = "each"
    # Keep each subject's answers in the batch's other relations (KL on those prompts, asked of this
    # subject, before vs during the optimisation), so a subject's new value does not carry its other
    # facts along. Up to this many relations per subject; 0 turns it off.
    anchor_relations: int = 8
    # Optimise all values together through the batch's own update at one layer (`joint()`), instead of
    # finding each δ at the subject and spreading it over the layers afterwards.
    through_update: bool = False
    # With `through_update`: the directions also read the subject's key in each of the edit's
    # paraphrases, not only behind the context prefixes of its prompt.
    paraphrase_keys: bool = False
    # With `through_update`: the subjects whose prompt, in its worst context, still has a mean target NLL
    # above `retry_above_nll` after the first pass go on from their δ with these settings, every other
    # subject's δ fixed and its rows still in the loss. None: one pass.
    retry_value: ValueParams | None = None
    retry_above_nll: float = 1.0
    # Edits that share their subject share one δ (the module docstring). Where that δ cannot carry all of
    # the subject's new answers (one point of key space for several new attributes: a small model's
    # subject state may not hold them at once), the edits it leaves behind are written once more, one
    # after another, as ROME edits with their key at the prompt's last token, where each relation has a
    # key of its own, at `fallback_layer`; the subject's other relations in the batch are held there as
    # they were. Whatever their share of the batch. The manifest names each edit written so.
    shared_subject_last_token: bool = True
    # With that pass on, a shared δ whose mean target NLL stays above this after its optimisation does not
    # carry its subject's answers: it is not written (its rows then ask the solve to leave the subject's
    # key as it is), and all of that subject's edits go to the last token. A δ pushed far without
    # getting there only moves the subject's other facts and its neighbours' (bench/results/editor_tuning.md).
    shared_value_max_nll: float = 0.5
    # Off by default (not part of MEMIT). When on, the same for edits of subjects the batch edits once,
    # while they are at most `fallback_max_share` of the batch.
    last_token_fallback: bool = False
    # None: two thirds of the depth, or the nearest layer below it whose MLP is not held at zero.
    fallback_layer: int | None = None
    fallback_max_share: float = 0.1
    # Null-space projection (AlphaEdit, Fang et al., ICLR 2025): each update is confined to the
    # directions the corpus keys leave empty (eigenvalues of C below this share of its largest), so
    # what the corpus keys read does not change, and it leaves the keys of earlier edits in a patch
    # chain (`protect`) alone; λC is then not part of the solve. None: MEMIT's solve.
    null_space: float | None = None
    null_space_l2: float = 10.0  # the solve's ridge, AlphaEdit's L2
    # In a patch chain (`protect`), the earlier edits' keys (their prompt behind every prefix, their
    # paraphrases) enter MEMIT's solve as rows whose output must stay as it is, each weighing this much
    # against a new edit's row: A = λC + μ K_pᵀK_p + KᵀK. 0: only λC holds them (MEMIT as published).
    chain_weight: float = 0.0

    def late_layer(self, n_layers: int, editable: list[int] | None = None, edits=()) -> int | None:
        """The layer the last-token pass writes for these edits (None when it cannot happen: it is off, or
        no two edits share a subject and the fallback for single edits is off)."""
        shared = self.shared_subject_last_token and len({e.subject for e in edits}) < len(edits)
        return fallback_layer(self.last_token_fallback or shared, self.fallback_layer, n_layers, editable)

    def __post_init__(self) -> None:
        if not 0 <= self.fallback_max_share <= 1:
            raise ValueError(f"fallback_max_share must be in [0, 1], got {self.fallback_max_share!r}")
        if self.null_space is not None:
            if self.through_update:
                raise ValueError("null_space works with MEMIT's spread over layers, not with through_update (--joint)")
            if not 0 < self.null_space < 1:
                raise ValueError(f"null_space must be in (0, 1), a share of C's largest eigenvalue; got {self.null_space!r}")
        if not self.chain_weight >= 0:
            raise ValueError(f"chain_weight must be ≥ 0, got {self.chain_weight!r}")
        if self.retry_value is not None:
            if not self.through_update:
                raise ValueError("retry_value needs through_update (the second pass optimises through the batch's update)")
            if not self.retry_above_nll > 0:
                raise ValueError(f"retry_above_nll must be positive, got {self.retry_above_nll!r}")

    @classmethod
    def joint(cls) -> "MemitParams":
        """One layer, values optimised through the update they will be written with (see `_apply_joint`).

        The weight decay sets δ's size, and every other subject's key reads a share of every δ, so the
        batch's damage to facts it does not edit grows with it. The directions also read the subject in
        each paraphrase (`paraphrase_keys`), and the prompt's rows (one per context prefix) count for
        `prompt_weight` paraphrases together in the NLL. In a patch chain the earlier edits' keys are held
        (`chain_weight`). Measurements: bench/results/editor_tuning.md.
        """
        value = ValueParams(lr=1.0, weight_decay=0.5, clamp_norm=4.0, norm_ref="residual", steps=80, kl_factor=0.0625,
                            anchor_kl_factor=0.25, anchor_at="answer", early_stop_kl=0.05, prompt_weight=3.0)
        return cls(value=value, mom2_weight=100000.0, through_update=True, paraphrase_keys=True, chain_weight=100.0)


def null_space_projector(cov: torch.Tensor, threshold: float) -> torch.Tensor:
    """P [k,k] (float64) onto the eigenvectors of C whose eigenvalues are below `threshold` × the largest."""
    vals, vecs = torch.linalg.eigh(cov.to(torch.float64))
    keep = vecs[:, vals < threshold * vals.max()]
    return keep @ keep.T


def projected_update(resid: torch.Tensor, keys: torch.Tensor, proj: torch.Tensor, protected: torch.Tensor | None,
                     l2: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(u, v) with u vᵀ = Xᵀ, X = (P (KᵀK + K_pᵀK_p) + l2·I)⁻¹ P Kᵀ R (AlphaEdit's solve): X lies in P's
    range, so the update reads nothing of the corpus keys' span, and K_p (earlier edits' keys) enter as
    rows it must leave as they are."""
    k64 = keys.to(torch.float64)
    a = k64.T @ k64
    if protected is not None and len(protected):
        p64 = protected.to(torch.float64)
        a = a + p64.T @ p64
    m = proj @ a + l2 * torch.eye(a.shape[0], dtype=torch.float64)
    v = torch.linalg.solve(m, proj @ k64.T)  # [k, n]
    return _compact(resid.to(torch.float64).T, v)


def held_gram(cov: torch.Tensor, lam: float, held: torch.Tensor | None, weight: float,
              overwrite_cov: bool = False) -> torch.Tensor:
    """λC + μ K_pᵀK_p (float64): what the solve keeps, the corpus keys and a chain's earlier edits' keys.
    With `overwrite_cov` (a float64 C the caller will not use again) it is built in C's own memory: at a
    real MLP width each copy of C is 0.25-2 GB."""
    a = cov if overwrite_cov and cov.dtype == torch.float64 else cov.to(torch.float64, copy=True)
    a.mul_(lam)
    if held is not None and len(held) and weight > 0:
        h64 = held.to(torch.float64)
        a.addmm_(h64.T, h64, alpha=weight)
    return a


def layer_update(resid: torch.Tensor, keys: torch.Tensor, cov: torch.Tensor, lam: float,
                 held: torch.Tensor | None = None, held_weight: float = 0.0,
                 overwrite_cov: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(u [d,n], v [k,n]) float32 with u vᵀ = Rᵀ K (λC + μK_pᵀK_p + KᵀK)⁻¹ for R [n,d], K [n,k] and
    `held` K_p, rows whose output stays as it is. `overwrite_cov`: see held_gram."""
    k64 = keys.to(torch.float64)
    a = held_gram(cov, lam, held, held_weight, overwrite_cov).addmm_(k64.T, k64)
    v = torch.linalg.solve(a, k64.T)  # A is symmetric, so (A⁻¹Kᵀ)ᵀ = K A⁻¹
    return _compact(resid.to(torch.float64).T, v)


def _compact(u: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """float32 (u, v) with the same u vᵀ (float64 in): with more columns than the weight has rank, factored
    exactly to rank ≤ min(d, k) so the patch stays small."""
    if u.shape[1] > min(u.shape[0], v.shape[0]):
        if u.shape[0] <= v.shape[0]:
            q, r = torch.linalg.qr(u)
            u, v = q, v @ r.T
        else:
            q, r = torch.linalg.qr(v)
            u, v = u @ r.T, q
    return u.to(torch.float32).contiguous(), v.to(torch.float32).contiguous()


def _anchors(tok, edits, subject: str, limit: int) -> list:
    """Prompts this subject's answers must keep: its edits' `keep` prompts, then the batch's prompts of
    relations this subject is not edited in (up to `limit` of those), asked of this subject."""
    mine = [e for e in edits if e.subject == subject]
    changed = {p for e in mine for p in (e.prompt, *e.paraphrases)}
    prompts = [k for e in mine for k in e.keep]
    own = {e.relation for e in mine}
    by_relation: dict[str, str] = {}
    for e in edits:
        if e.relation not in own and e.relation not in by_relation:
            by_relation[e.relation] = e.prompt
    prompts += list(by_relation.values())[:max(limit, 0)]
    rows = []
    for prompt in dict.fromkeys(p for p in prompts if p not in changed):
        try:
            rows.append(encode(tok, prompt, subject))
        except TokenizationError:
            continue
    return rows


def _phrasings(rows: list[EditRows]) -> list[int]:
    """The phrasing ids of several edits' rows put together (one subject's edits share one δ): each
    edit's phrasings stay apart from the others', its prompt still negative."""
    out, offset = [], 0
    for k, er in enumerate(rows):
        out += [-(k + 1) if g < 0 else offset + g for g in er.phrasing]
        offset += max([0, *er.phrasing])  # an edit without paraphrases has only its prompt (-1)
    return out


@dataclass(frozen=True)
class MemitBatch:
    """One MEMIT batch, prepared: what both ways of solving it (spread over layers, or through the update)
    read. `per_subject` holds each subject's rows; `group[i]` is edit i's subject index."""

    adapter: Adapter
    tok: Any
    edits: list
    layers: list[int]
    covs: Mapping[int, torch.Tensor]  # stats.Moments, or a dict
    prefixes: list[str]
    hp: MemitParams
    subjects: list[str]
    per_subject: list[EditRows]
    group: torch.Tensor
    on_progress: Callable[[str, int, int], None] | None
    protect: list | None = None


def apply_memit(
    adapter: Adapter,
    tok,
    edits,
    layers: list[int],
    covs: Mapping[int, torch.Tensor],
    prefixes: list[str],
    hp: MemitParams,
    on_progress: Callable[[str, int, int], None] | None = None,
    protect: list | None = None,
) -> tuple[dict[int, tuple[torch.Tensor, torch.Tensor]], dict]:
    """Apply the batch to the live model; returns per-layer factors and optimisation details.
    `protect`: earlier edits (a parent chain's) whose keys the update leaves alone: a null-space update,
    or MEMIT's solve with `chain_weight`."""
    layers = sorted(layers)
    subjects = list(dict.fromkeys(e.subject for e in edits))
    group = torch.tensor([subjects.index(e.subject) for e in edits])
    per_edit = [build_rows(tok, e.prompt, e.subject, e.target_new, prefixes, paraphrases=e.paraphrases) for e in edits]
    per_subject = []
    for g, subject in enumerate(subjects):
        own = [er for i, er in enumerate(per_edit) if int(group[i]) == g]  # this subject's edits, in order
        per_subject.append(EditRows([r for er in own for r in er.rewrite], own[0].essence,
                                    _anchors(tok, edits, subject, hp.anchor_relations), _phrasings(own)))
    batch = MemitBatch(adapter, tok, edits, layers, covs, prefixes, hp, subjects, per_subject, group, on_progress,
                       protect)
    factors, info = _apply_joint(batch) if hp.through_update else _apply_spread(batch)
    late = hp.late_layer(adapter.n_layers, adapter.editable_layers(), edits)
    if late is not None:
        factors, info["last_token_fallback"] = _last_token_fallback(
            adapter, tok, edits, late, covs[late], prefixes, factors,
            hp.fallback_max_share if hp.last_token_fallback else 0.0, on_progress,
            shared=hp.shared_subject_last_token, max_tokens_per_pass=hp.value.max_tokens_per_pass)
    return factors, info


def not_taken(adapter, tok, edits) -> list[int]:
    """The edits whose prompt or a written paraphrase does not yet answer the target (greedy)."""
    asks = [(i, p) for i, e in enumerate(edits) for p in dict.fromkeys([e.prompt, *e.paraphrases])]
    taken = score_targets(adapter, tok, [(p, edits[i].subject, edits[i].target_new) for i, p in asks]).greedy
    return sorted({i for (i, _), ok in zip(asks, taken.tolist()) if not ok})


def _held_relations(edits, i: int) -> list[str]:
    """What edit i's last-token write must leave as it is: its keep prompts, and every phrasing of its
    subject's other edits in the batch (a last-token key reads the relation, and relations of one
    subject sit close together there)."""
    e = edits[i]
    others = [q for o in edits if o.subject == e.subject and o.relation != e.relation for q in (o.prompt, *o.paraphrases)]
    return list(dict.fromkeys([*e.keep, *others]))


def _last_token_fallback(adapter, tok, edits, late: int, cov: torch.Tensor, prefixes, factors, max_share: float, on_progress,
                         shared: bool = False, max_tokens_per_pass: int | None = None):
    """The edits the batch did not take, written at the prompt's last token at `late`, one after another
    on the edited model; returns the factors with theirs added and what was done. With `shared`, every
    edit left whose subject has others in the batch is written; an edit of a subject edited once only
    while those are at most `max_share` of the batch."""
    missed = not_taken(adapter, tok, edits)
    counts = Counter(e.subject for e in edits)
    of_shared = [i for i in missed if shared and counts[edits[i].subject] > 1]
    single = [i for i in missed if i not in of_shared]
    chosen = of_shared + (single if single and len(single) <= max_share * len(edits) else [])
    if not chosen:
        return factors, {"missed": len(missed), "written": []}
    chosen.sort()
    cb = (lambda i, rec: on_progress("last-token", i + 1, len(chosen))) if on_progress else None
    to_write = [edits[i].model_copy(update={"keep": _held_relations(edits, i)}) for i in chosen]
    # Judged by their mean NLL alone (retry_on_prompt off): MEMIT's figures in the README and the tuning
    # note were measured so; counting the bare prompt's answer here is not measured yet.
    rome = RomeParams(last_token_fallback=False, retry_on_prompt=False)
    rome = replace(rome, value=replace(rome.value, max_tokens_per_pass=max_tokens_per_pass))  # the batch's memory budget
    written, recs = apply_rome(adapter, tok, to_write, late, cov, prefixes, rome, on_edit=cb, at="last")
    factors = dict(factors)
    for layer, (u, v) in written.items():  # a layer the batch also wrote: the ranks concatenate
        factors[layer] = concat_ranks(factors[layer], (u, v)) if layer in factors else (u, v)
    records = [{"subject": edits[i].subject, "relation": edits[i].relation, "layer": late, "nll": _r(r["nll"]),
                "reason": "shared subject" if i in of_shared else "missed"}
               for i, r in zip(chosen, recs)]
    return dict(sorted(factors.items())), {"missed": len(missed), "written": records}


def _apply_spread(b: MemitBatch):
    """MEMIT as published: each subject's δ found at the last layer, then spread over the layers."""
    adapter, tok, edits, layers, covs, prefixes = b.adapter, b.tok, b.edits, b.layers, b.covs, b.prefixes
    hp, subjects, per_subject, group, on_progress = b.hp, b.subjects, b.per_subject, b.group, b.on_progress
    last = layers[-1]
    res = optimise_values(
        adapter, tok, last, per_subject, hp.value,
        progress=(lambda s, t, a: on_progress("values", s, t)) if on_progress else None,
    )
    deltas = res.deltas.clone()
    tokens = hp.value.max_tokens_per_pass  # the memory budget's, for the forward passes below too
    dropped = unwritten_shared_values(hp, group, res.final_nll)
    deltas[dropped] = 0.0
    # One target per key row: that row's own residual plus its subject's δ. With "each", a row for every
    # phrasing the edit is written in (the prompt behind each prefix, each paraphrase), so the solve
    # writes δ wherever the edit is asked, not only in the prompt's wording.
    if hp.key_rows == "each":
        rows, owner = written_rows(tok, edits, prefixes)
        keys_at = lambda layer: keys_of_rows(adapter, tok, layer, rows, max_tokens=tokens)
    else:
        rows, owner = [encode(tok, e.prompt, e.subject) for e in edits], torch.arange(len(edits))
        keys_at = lambda layer: subject_keys(adapter, tok, layer, edits, prefixes, max_tokens=tokens)
    row_group = group[owner]
    z = residuals_of_rows(adapter, tok, last, rows, max_tokens=tokens) + deltas.to(torch.float64)[row_group]
    factors: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    gaps = []
    held_at = _chain_keys(b)
    for i, layer in enumerate(layers):
        gap = z - residuals_of_rows(adapter, tok, last, rows, max_tokens=tokens)
        gaps.append(float(gap.norm(dim=-1).mean()))
        protected = held_at(layer)
        if hp.null_space is None:
            cov, owned = _solve_copy(covs, layer)
            u, v = layer_update(gap / (len(layers) - i), keys_at(layer), cov, hp.mom2_weight, protected, hp.chain_weight,
                                overwrite_cov=owned)
            del cov
            release_freed_memory()
        else:
            u, v = projected_update(gap / (len(layers) - i), keys_at(layer), null_space_projector(covs[layer], hp.null_space),
                                    protected, hp.null_space_l2)
        add_low_rank(adapter, layer, u, v)
        factors[layer] = (u, v)
        if on_progress:
            on_progress("layers", i + 1, len(layers))
    final_gap = float((z - residuals_of_rows(adapter, tok, last, rows, max_tokens=tokens)).norm(dim=-1).mean())
    info = {
        "value_nll_mean": float(res.final_nll.mean()),
        "value_steps_mean": float(res.steps_taken.float().mean()),
        "delta_norm_mean": float(res.deltas.norm(dim=-1).mean()),
        "subjects": len(subjects),
        "residual_gap_by_layer": gaps + [final_gap],
        # subjects of several edits whose shared δ did not carry them and was not written
        "shared_values_not_written": [subjects[g] for g in dropped.nonzero().squeeze(1).tolist()],
    }
    return factors, info


def _solve_copy(covs, layer: int) -> tuple[torch.Tensor, bool]:
    """(C of `layer`, whether the solve may overwrite it): a copy of its own where the statistics hand
    one out (stats.Moments.fresh), else the shared tensor."""
    fresh = getattr(covs, "fresh", None)
    return (fresh(layer), True) if fresh is not None else (covs[layer], False)


def _chain_keys(b: MemitBatch) -> Callable[[int], torch.Tensor | None]:
    """layer -> the keys of a chain's earlier edits there (None when nothing holds them: no parent, or
    neither the null space nor `chain_weight` reads them)."""
    if not b.protect or (b.hp.null_space is None and b.hp.chain_weight <= 0):
        return lambda layer: None
    rows, _ = written_rows(b.tok, b.protect, b.prefixes)
    return lambda layer: keys_of_rows(b.adapter, b.tok, layer, rows, max_tokens=b.hp.value.max_tokens_per_pass)


def unwritten_shared_values(hp: MemitParams, group: torch.Tensor, final_nll: torch.Tensor) -> torch.Tensor:
    """[subjects] bool: the shared δ (a subject with several edits) that ended above `shared_value_max_nll`
    while the last-token pass is on to write its edits instead."""
    several = torch.bincount(group, minlength=len(final_nll)) > 1
    if not hp.shared_subject_last_token:
        return torch.zeros_like(several)
    return several & (final_nll > hp.shared_value_max_nll)


def batch_directions(keys: torch.Tensor, row_group: torch.Tensor, n_groups: int, cov: torch.Tensor, lam: float,
                     held: torch.Tensor | None = None, held_weight: float = 0.0) -> torch.Tensor:
    """[key_dim, n_groups] float64: column g = (λC + μK_pᵀK_p + KᵀK)⁻¹ Σ_{rows of g} k, scaled so the rows of
    g read gain 1 on average. MEMIT's solve Δ = Rᵀ K (λC + KᵀK)⁻¹ with every row of subject g asking for the
    same δ_g is exactly Σ_g δ_g ⊗ column g, so the directions are known before δ is. `held` (K_p): rows
    the update must leave as they are (a chain's earlier edits)."""
    k64 = keys.to(torch.float64)
    a = held_gram(cov, lam, held, held_weight).addmm_(k64.T, k64)
    summed = torch.zeros(n_groups, k64.shape[1], dtype=torch.float64).index_add(0, row_group, k64)
    dirs = torch.linalg.solve(a, summed.T)  # [k, n_groups]
    gain = torch.zeros(n_groups, dtype=torch.float64).index_add(0, row_group, (k64 * dirs.T[row_group]).sum(-1))
    count = torch.bincount(row_group, minlength=n_groups).to(torch.float64)
    return dirs / (gain / count)[None, :]


def direction_keys(adapter, tok, layer: int, edits, group: torch.Tensor, prefixes: list[str], paraphrases: bool,
                   max_tokens: int | None = None):
    """(keys [rows, key_dim] float64, row_group [rows]): the subject's key in its prompt behind every
    prefix and, with `paraphrases`, in each of its edits' paraphrases, with the subject group of each row."""
    keys = subject_keys_each(adapter, tok, layer, edits, prefixes, max_tokens=max_tokens)
    row_group = group.repeat_interleave(len(prefixes))
    if paraphrases:
        extra, owner = written_paraphrase_keys(adapter, tok, layer, edits, max_tokens=max_tokens)
        keys = torch.cat([keys, extra])
        row_group = torch.cat([row_group, group[owner].to(row_group.dtype)])
    return keys, row_group


def _r(x) -> float:
    return round(float(x), 5)


def _apply_joint(b: MemitBatch):
    """Every subject's δ is optimised with the whole batch's update Σ_g δ_g ⊗ direction_g in the forward
    pass, at every position of every row: each edit's spill onto the others' prompts, anchors and keep
    prompts is part of the loss, and what is optimised is exactly what the patch writes."""
    adapter, tok, edits, layers, covs, prefixes = b.adapter, b.tok, b.edits, b.layers, b.covs, b.prefixes
    hp, subjects, per_subject, on_progress = b.hp, b.subjects, b.per_subject, b.on_progress
    group = b.group
    if len(layers) != 1:
        raise ValueError(f"MEMIT through its update writes one layer, got {layers}")
    layer = layers[0]
    keys, row_group = direction_keys(adapter, tok, layer, edits, group, prefixes, hp.paraphrase_keys,
                                     hp.value.max_tokens_per_pass)
    dirs = batch_directions(keys, row_group, len(per_subject), covs[layer], hp.mom2_weight, _chain_keys(b)(layer), hp.chain_weight)

    def run(value: ValueParams, stage: str, **kw):
        return optimise_values(adapter, tok, layer, per_subject, value, batch_directions=dirs.to(torch.float32),
                               progress=(lambda s, t, a: on_progress(stage, s, t)) if on_progress else None, **kw)

    res = run(hp.value, "values")
    deltas, nll, steps = res.deltas, res.final_nll.clone(), res.steps_taken.clone()
    # Judged by the prompt in its worst context: a subject's mean NLL over its prompts and paraphrases can be
    # low while its bare prompt still answers the old value.
    worst = res.final_prompt_nll_max
    stuck = (worst > hp.retry_above_nll) if hp.retry_value is not None else torch.zeros(len(per_subject), dtype=torch.bool)
    if stuck.any():
        again = run(hp.retry_value, "values-retry", start=deltas, fixed=~stuck)
        deltas = again.deltas
        nll[stuck], steps[stuck] = again.final_nll[stuck], steps[stuck] + again.steps_taken[stuck]
        worst = torch.where(stuck, again.final_prompt_nll_max, worst)
    u, v = _compact(deltas.to(torch.float64).T, dirs)
    add_low_rank(adapter, layer, u, v)
    info = {
        "value_nll_mean": float(nll.mean()),
        "value_steps_mean": float(steps.float().mean()),
        "delta_norm_mean": float(deltas.norm(dim=-1).mean()),
        "subjects": len(per_subject),
        # per subject, in the order subjects first appear in the batch
        "subject_nll": [_r(x) for x in nll],
        "prompt_nll_max": [_r(x) for x in worst],
        # the subjects the second pass moved, and their NLLs before and after it
        "second_pass": [{"subject": subjects[g], "nll_first": _r(res.final_nll[g]), "nll": _r(nll[g]),
                         "prompt_nll_max_first": _r(res.final_prompt_nll_max[g]), "prompt_nll_max": _r(worst[g])}
                        for g in stuck.nonzero().squeeze(1).tolist()],
    }
    return {layer: (u, v)}, info
