"""The value side of an edit: the residual delta that makes the model say the new target.

For every edit a vector δ is added to the MLP output at `layer`, at the subject's last token, in the
edit prompt behind several context prefixes. δ is optimised so the prompts yield the new target, with
a KL term that keeps what the model thinks the subject is (an "essence" prompt), weight decay, a norm
clamp, and early stopping per edit. All edits of a batch share each forward/backward pass: δ is one
[n_edits, d] parameter and every row of the batch reads its own edit's row.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F

from .adapters import Adapter
from .hooks import add_low_rank_update, add_rank_one, add_to_output, capture_output
from .memory import release_freed_memory
from .prompts import Row, batch, encode, row_chunks, target_positions

ESSENCE_TEMPLATE = "{} is a"


DECAY_FORMS = ("ratio_squared", "published")
NORM_REFS = ("mlp", "residual")


@dataclass(frozen=True)
class ValueParams:
    steps: int = 25
    lr: float = 0.5
    weight_decay: float = 0.5
    # How the decay grows with δ: "ratio_squared", weight_decay · (‖δ‖/‖reference‖)², the same pull at any
    # scale of the residual stream; "published", weight_decay · ‖δ‖/‖reference‖², the form ROME's and
    # MEMIT's code use (weak where the reference is large), for their published settings (editor/hparams).
    decay_form: str = "ratio_squared"
    kl_factor: float = 0.0625
    # Weight of the anchor rows (keep prompts, the batch's other relations) in the KL term; None: kl_factor.
    anchor_kl_factor: float | None = None
    # Where an anchor row is read: "answer" (its last token, where its answer is predicted) or "all"
    # (from the subject's last token on, like the essence prompt).
    anchor_at: str = "answer"
    clamp_norm: float = 4.0  # ‖δ‖ ≤ clamp_norm · ‖reference‖
    norm_ref: str = "mlp"  # reference for clamp and decay: the MLP output ("mlp") or the residual ("residual")
    early_stop_nll: float = 0.05
    # An edit also stops only once its KL rows have moved less than this (mean KL per position);
    # None: the NLL alone decides, and the first δ that says the target is kept whatever it costs.
    early_stop_kl: float | None = None
    # ...or once its KL has stopped falling: no step in the last `kl_patience` lowered it by more than
    # `kl_plateau` (a share of its best so far) while the target was said. None: the threshold alone.
    # Without `early_stop_kl` it has nothing to shorten: the target alone stops an edit.
    kl_patience: int | None = None
    kl_plateau: float = 0.02
    # Most-probable early stopping (ENCORE, Gupta et al. 2025): an edit also stops once its target is the
    # most probable continuation, token by token, in every row it is written in, however low its NLL; the
    # value then carries no more than the edit needs, which the paper finds keeps mass edits specific.
    stop_at_argmax: bool = False
    max_rows_per_pass: int = 2048  # memory bound: larger batches accumulate gradients over chunks
    # Tokens (padding counted) a pass may hold, from a memory budget (editor/memory.py); None: rows alone.
    max_tokens_per_pass: int | None = None
    # How many paraphrases the edit prompt's rows (one per context prefix) count for together in the
    # edit's NLL; None: each row counts as one, so 6 prefixes outweigh 3 paraphrases 2:1.
    prompt_weight: float | None = None

    def __post_init__(self) -> None:
        if self.decay_form not in DECAY_FORMS:
            raise ValueError(f"decay_form must be one of {', '.join(DECAY_FORMS)}, got {self.decay_form!r}")
        if self.norm_ref not in NORM_REFS:
            raise ValueError(f"norm_ref must be one of {', '.join(NORM_REFS)}, got {self.norm_ref!r}")
        if self.anchor_at not in ("answer", "all"):
            raise ValueError(f"anchor_at must be 'answer' or 'all', got {self.anchor_at!r}")
        if self.prompt_weight is not None and not self.prompt_weight > 0:
            raise ValueError(f"prompt_weight must be positive, got {self.prompt_weight!r}")
        if self.kl_patience is not None and not self.kl_patience >= 1:
            raise ValueError(f"kl_patience must be at least 1 step, got {self.kl_patience!r}")
        if not 0 <= self.kl_plateau < 1:
            raise ValueError(f"kl_plateau must be a share in [0, 1), got {self.kl_plateau!r}")
        if self.max_tokens_per_pass is not None and not self.max_tokens_per_pass > 0:
            raise ValueError(f"max_tokens_per_pass must be positive, got {self.max_tokens_per_pass!r}")


def decay_term(hp: ValueParams, delta_norm: torch.Tensor, ref_norm: torch.Tensor) -> torch.Tensor:
    """The weight-decay term for values of norm `delta_norm` against references of norm `ref_norm`."""
    if hp.decay_form == "published":
        return hp.weight_decay * delta_norm / ref_norm ** 2
    return hp.weight_decay * (delta_norm / ref_norm) ** 2


@dataclass
class EditRows:
    rewrite: list[Row]  # prefix × prompt + target_new
    essence: Row  # the essence prompt, no target
    # More prompts whose next-token distributions must stay as they were (KL), such as the subject
    # asked in relations the edit does not change.
    anchors: list[Row] = field(default_factory=list)
    # The phrasing each rewrite row asks, for ValueParams.prompt_weight: negative for an edit prompt
    # (behind any prefix), positive for a paraphrase; empty: every row a phrasing of its own.
    phrasing: list[int] = field(default_factory=list)

    @property
    def kl_rows(self) -> list[Row]:
        return [self.essence, *self.anchors]


@dataclass
class ValueResult:
    deltas: torch.Tensor  # [n, d] added at the MLP output (equivalently the residual) at `layer`
    init_residual: torch.Tensor  # [n, d] the block output at the subject's last token, plain prompt
    final_nll: torch.Tensor  # [n]
    final_kl: torch.Tensor  # [n] mean KL per position of the edit's KL rows at its last step
    steps_taken: torch.Tensor  # [n]
    # [n] the NLL (mean over target tokens) of the edit's prompt in its worst-served context, at its last
    # step: an edit can be fine on average and still miss its bare prompt
    final_prompt_nll_max: torch.Tensor
    # [n] target tokens of the edit's bare prompt (its first rewrite row: the empty prefix comes first)
    # that were not the most probable at its last step: 0 when the prompt says the target, greedy
    final_prompt_missed: torch.Tensor
    log: list[dict] = field(default_factory=list)


def written_paraphrases(prompt: str, paraphrases) -> list[str]:
    """The paraphrases an edit is written in besides its prompt: each once, the prompt itself left out."""
    return [p for p in dict.fromkeys(paraphrases) if p != prompt]


def build_rows(tok, prompt: str, subject: str, target: str, prefixes: list[str], keep: list[str] = (),
               paraphrases: list[str] = (), neighbours: list[str] = ()) -> EditRows:
    """The edit's rows: the prompt behind every prefix, each paraphrase once (plain); `keep` prompts
    (the subject's other questions) and every phrasing written asked of each of `neighbours` (other
    subjects) become KL anchors."""
    rewrite = [encode(tok, prompt, subject, prefix=p, target=target) for p in prefixes]
    extra = written_paraphrases(prompt, paraphrases)
    rewrite += [encode(tok, p, subject, target=target) for p in extra]
    phrasing = [-1] * len(prefixes) + list(range(1, len(extra) + 1))
    try:
        essence = encode(tok, ESSENCE_TEMPLATE, subject)
    except ValueError:
        essence = encode(tok, "{}", subject)
    anchors = [encode(tok, k, subject) for k in dict.fromkeys(keep)]
    anchors += [encode(tok, q, n) for n in dict.fromkeys(neighbours) if n != subject for q in (prompt, *extra)]
    return EditRows(rewrite, essence, anchors, phrasing)


def rewrite_divisors(er: EditRows, prompt_weight: float | None) -> list[float]:
    """What each rewrite row's NLL is divided by: its share of the edit's NLL is 1/divisor, and the
    shares sum to 1. An edit prompt's rows share `prompt_weight` between them, a paraphrase's rows 1."""
    n = len(er.rewrite)
    if prompt_weight is None or not er.phrasing:
        return [float(n)] * n
    size = Counter(er.phrasing)
    weight = {g: (prompt_weight if g < 0 else 1.0) for g in size}
    total = sum(weight.values())
    return [total * size[g] / weight[g] for g in er.phrasing]


def kl_from(row: Row, slot: int, anchor_at: str = "answer") -> int:
    """The first position a KL row is read at, to its end: the essence prompt (slot 0) from the subject's
    last token; an anchor (slot ≥ 1) likewise, or with anchor_at="answer" at its last token only, where
    its answer is predicted (the template words between subject and answer then hold δ back less)."""
    return len(row.ids) - 1 if slot > 0 and anchor_at == "answer" else row.subject_last


def _spans(starts: torch.Tensor, ends: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(row, position) for every position from each row's start to its end."""
    sizes = (ends - starts).clamp_min(0)
    b_idx = torch.repeat_interleave(torch.arange(len(starts)), sizes)
    first = torch.repeat_interleave(starts - torch.cumsum(sizes, 0) + sizes, sizes)
    return b_idx, first + torch.arange(int(sizes.sum()))


@dataclass
class _RowTable:
    """A batch's rows, flattened once and sorted shortest first (a chunk then pads its rows to about their
    own length), with what each row is: the edit it belongs to (owner), which of the edit's KL rows
    (slot; -1 for a rewrite row), its length, where its KL is read from (a rewrite row: its end, so
    nowhere), a rewrite row's NLL divisor (rewrite_divisors; 0 for a KL row), whether it asks an
    edit prompt (not a paraphrase, not a KL row) and whether it is the edit's bare prompt (its first
    rewrite row)."""

    rows: list[Row]
    owner: torch.Tensor
    slot: torch.Tensor
    length: torch.Tensor
    kl_from: torch.Tensor
    divisor: torch.Tensor
    is_prompt: torch.Tensor
    is_bare: torch.Tensor

    @classmethod
    def build(cls, rows_per_edit: list[EditRows], prompt_weight: float | None, anchor_at: str) -> "_RowTable":
        # (row, owner, slot, kl_from, divisor, is_prompt, is_bare): rewrite rows first, then KL rows
        entries = []
        for e, er in enumerate(rows_per_edit):
            prompt = [g < 0 for g in er.phrasing] if er.phrasing else [True] * len(er.rewrite)
            entries += [(r, e, -1, len(r.ids), w, p, j == 0 and p)
                        for j, (r, w, p) in enumerate(zip(er.rewrite, rewrite_divisors(er, prompt_weight), prompt))]
        for e, er in enumerate(rows_per_edit):
            entries += [(r, e, j, kl_from(r, j, anchor_at), 0.0, False, False) for j, r in enumerate(er.kl_rows)]
        entries.sort(key=lambda x: len(x[0].ids))  # stable: rows of one length keep that order
        rows, owner, slot, start, divisor, is_prompt, is_bare = zip(*entries) if entries else ((),) * 7
        return cls(list(rows), torch.tensor(owner, dtype=torch.long), torch.tensor(slot, dtype=torch.long),
                   torch.tensor([len(r.ids) for r in rows], dtype=torch.long), torch.tensor(start, dtype=torch.long),
                   torch.tensor(divisor, dtype=torch.float), torch.tensor(is_prompt, dtype=torch.bool),
                   torch.tensor(is_bare, dtype=torch.bool))

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def is_kl(self) -> torch.Tensor:
        return self.slot >= 0

    def take(self, keep: torch.Tensor | slice) -> "_RowTable":
        """The rows `keep` selects (a boolean mask or a slice), in the same order."""
        idx = keep.nonzero().squeeze(1).tolist() if isinstance(keep, torch.Tensor) else range(len(self))[keep]
        return _RowTable([self.rows[b] for b in idx], self.owner[keep], self.slot[keep], self.length[keep],
                         self.kl_from[keep], self.divisor[keep], self.is_prompt[keep], self.is_bare[keep])

    def of_edits(self, edits: list[int], n: int) -> "_RowTable":
        wanted = torch.zeros(n, dtype=torch.bool)
        wanted[edits] = True
        return self.take(wanted[self.owner])

    def kl_positions(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(row, position) pairs the KL term reads."""
        return _spans(self.kl_from, self.length)


def _length_chunks(rows: list[Row], size: int, max_tokens: int | None = None, pieces: int = 4):
    """Chunks of rows sorted by length: at most `size` rows each and at least `pieces` chunks when there
    are enough rows, so short rows are not padded to the longest (a third to half of the work here).
    With `max_tokens`, a chunk also holds at most that many tokens once padded to its longest row (one
    row at least, whatever its length)."""
    n = len(rows)
    per = max(1, min(size, -(-n // pieces) if n >= 64 * pieces else n))
    return row_chunks(rows, per, max_tokens)


@torch.no_grad()
def _reference(adapter: Adapter, tok, layer: int, rows_per_edit: list[EditRows], chunk: int, anchor_at: str,
               max_tokens: int | None = None):
    """Per edit: the MLP output and the block output at the subject's last token of the plain prompt,
    and, per (edit, KL row), the log-probabilities before editing from the subject on (the KL anchor)."""
    plain = [er.rewrite[0] for er in rows_per_edit]
    mlp_out, resid = [], []
    for s, e in row_chunks(plain, chunk, max_tokens):
        rows = plain[s:e]
        ids, mask = batch(rows, tok)
        b = torch.arange(len(rows))
        p = torch.tensor([r.subject_last for r in rows])
        with capture_output(adapter.mlp_out(layer), b, p) as m, capture_output(adapter.blocks[layer], b, p) as h:
            adapter.hidden_at(ids, mask)
        mlp_out.append(m[0])
        resid.append(h[0])
    kl = [((i, j), r) for i, er in enumerate(rows_per_edit) for j, r in enumerate(er.kl_rows)]
    anchors: dict[tuple[int, int], torch.Tensor] = {}
    for s, e in row_chunks([r for _, r in kl], chunk, max_tokens):
        keys, rows = zip(*kl[s:e])
        ids, mask = batch(list(rows), tok)
        hidden = adapter.hidden_at(ids, mask)
        starts = torch.tensor([kl_from(r, j, anchor_at) for (_, j), r in zip(keys, rows)])
        bi, pi = _spans(starts, torch.tensor([len(r.ids) for r in rows]))
        logp = F.log_softmax(adapter.head(hidden[bi, pi]).float(), -1)
        anchors.update(zip(keys, logp.split(torch.bincount(bi, minlength=len(rows)).tolist())))
    return torch.cat(mlp_out).float(), torch.cat(resid).float(), anchors


def optimise_values(
    adapter: Adapter,
    tok,
    layer: int,
    rows_per_edit: list[EditRows],
    hp: ValueParams,
    progress: Callable[[int, int, int], None] | None = None,
    directions: torch.Tensor | None = None,
    batch_directions: torch.Tensor | None = None,
    start: torch.Tensor | None = None,
    fixed: torch.Tensor | None = None,
) -> ValueResult:
    """Optimise δ for every edit at once; returns δ and the pre-edit residual at the subject.

    With `directions` ([n, key_dim], ROME's C⁻¹k*/(k*ᵀC⁻¹k*)) δ is applied the way the rank-one
    update will apply it, at every position: (key · direction) δ. The optimiser then sees exactly the
    edited model, so a key that differs from the averaged k* (the subject right after <s>, where it
    sits in the edit prompt itself, reaches only about half of k*'s gain on the fixture) is still
    written hard enough, and δ's spill onto the prompt's other tokens is part of the loss.

    With `batch_directions` ([key_dim, n]) every row sees the whole batch's update, (key · directions) δ,
    at every position: the edits are optimised together through the low-rank update the patch writes,
    so one edit's spill onto another's prompts (and onto the anchors) is part of the loss.

    `start` ([n, d]) is where δ begins instead of zero, and the edits `fixed` marks ([n] bool) keep their
    starting δ throughout (through `batch_directions` their rows still count in the loss): a second pass
    can move only the edits the first left behind.
    """
    model = adapter.model
    n = len(rows_per_edit)
    d = adapter.hidden_dim()
    mlp_ref, resid_ref, anchors = _reference(adapter, tok, layer, rows_per_edit, hp.max_rows_per_pass, hp.anchor_at,
                                           hp.max_tokens_per_pass)
    ref = mlp_ref if hp.norm_ref == "mlp" else resid_ref
    ref_norm = ref.norm(dim=-1).clamp_min(1e-6)
    max_norm = hp.clamp_norm * ref_norm

    if start is not None and tuple(start.shape) != (n, d):
        raise ValueError(f"start must be [{n}, {d}], got {list(start.shape)}")
    if fixed is not None and tuple(fixed.shape) != (n,):
        raise ValueError(f"fixed must be [{n}], got {list(fixed.shape)}")
    delta = (torch.zeros(n, d) if start is None else start.detach().clone().float()).requires_grad_(True)
    opt = torch.optim.Adam([delta], lr=hp.lr)
    done = torch.zeros(n, dtype=torch.bool) if fixed is None else fixed.clone().bool()
    final_nll = torch.full((n,), float("nan"))
    final_kl = torch.full((n,), float("nan"))
    final_prompt_nll_max = torch.full((n,), float("nan"))
    final_prompt_missed = torch.zeros(n)
    steps_taken = torch.zeros(n, dtype=torch.long)
    best_kl = torch.full((n,), float("inf"))
    flat_steps = torch.zeros(n, dtype=torch.long)  # steps since the KL last fell by kl_plateau
    log: list[dict] = []
    for p in model.parameters():
        p.requires_grad_(False)

    table = _RowTable.build(rows_per_edit, hp.prompt_weight, hp.anchor_at)
    # KL positions per edit over all its rows (they may fall in several chunks); a pass holds all of an
    # edit's rows or none, so the counts hold for every pass.
    kl_owner = table.owner[table.kl_positions()[0]]
    kl_count = torch.zeros(n).index_add(0, kl_owner, torch.ones(len(kl_owner))).clamp_min(1)

    for step in range(hp.steps):
        active = [i for i in range(n) if not done[i]]
        if not active:
            break
        # Through a shared update every edit's rows stay in the pass: a finished edit's δ is frozen,
        # but the others' δ still reach its prompts, and its loss keeps them from undoing it.
        in_pass = table if batch_directions is not None else table.of_edits(active, n)
        # Row chunks keep memory bounded; gradients accumulate, one optimizer step per pass over all edits.
        opt.zero_grad()
        nll_sum = torch.zeros(n)
        kl_sum = torch.zeros(n)
        prompt_nll_max = torch.zeros(n)
        not_argmax = torch.zeros(n)  # target tokens, per edit, that are not yet the most probable
        bare_missed = torch.zeros(n)  # ...of those, the ones on the edit's bare prompt
        for s, e in _length_chunks(in_pass.rows, hp.max_rows_per_pass, hp.max_tokens_per_pass):
            c = in_pass.take(slice(s, e))
            ids, mask = batch(c.rows, tok)
            b_all = torch.arange(len(c))
            subj = torch.tensor([r.subject_last for r in c.rows])
            if batch_directions is not None:
                edit_hook = add_low_rank_update(adapter.mlp_out(layer), batch_directions, delta)
            elif directions is None:
                edit_hook = add_to_output(adapter.mlp_out(layer), b_all, subj, delta[c.owner])
            else:
                edit_hook = add_rank_one(adapter.mlp_out(layer), directions[c.owner], delta[c.owner])
            with edit_hook:
                hidden = adapter.hidden_at(ids, mask)
            loss = hidden.new_zeros(())
            rw = (~c.is_kl).nonzero().squeeze(1).tolist()
            if rw:
                tb, tp, tt = target_positions([c.rows[b] for b in rw])
                tb_rows = torch.tensor(rw)[tb]
                logp = F.log_softmax(adapter.head(hidden[tb_rows, tp]).float(), -1)
                tok_nll = -logp.gather(1, tt[:, None]).squeeze(1)
                missed = (logp.detach().argmax(-1) != tt).float()
                not_argmax += torch.zeros(n).index_add(0, c.owner[tb_rows], missed)
                bare_missed += torch.zeros(n).index_add(0, c.owner[tb_rows], missed * c.is_bare[tb_rows])
                # mean over a row's target tokens, then the edit's rows weighed (rewrite_divisors)
                n_tok = torch.tensor([r.n_target for r in c.rows], dtype=torch.float)
                w = 1.0 / (n_tok[tb_rows] * c.divisor[tb_rows])
                nll_sum += torch.zeros(n).index_add(0, c.owner[tb_rows], (tok_nll * w).detach())
                row_nll = torch.zeros(len(c)).index_add(0, tb_rows, tok_nll.detach() / n_tok[tb_rows])
                asks = c.is_prompt.nonzero().squeeze(1)
                prompt_nll_max = prompt_nll_max.scatter_reduce(0, c.owner[asks], row_nll[asks], reduce="amax")
                loss = loss + (tok_nll * w).sum()
            if c.is_kl.any():
                eb, ep = c.kl_positions()
                logp = F.log_softmax(adapter.head(hidden[eb, ep]).float(), -1)
                anchor = torch.cat([anchors[(int(c.owner[b]), int(c.slot[b]))] for b in c.is_kl.nonzero().squeeze(1).tolist()])
                kl = F.kl_div(logp, anchor, log_target=True, reduction="none").sum(-1)
                kl_mean = kl / kl_count[c.owner[eb]]  # each position's share of its edit's mean KL
                kl_sum += torch.zeros(n).index_add(0, c.owner[eb], kl_mean.detach())
                anchor_factor = hp.kl_factor if hp.anchor_kl_factor is None else hp.anchor_kl_factor
                weight = torch.where(c.slot[eb] > 0, anchor_factor, hp.kl_factor)
                loss = loss + (weight * kl_mean).sum()
            loss.backward()
        act = torch.tensor(active)
        decay = decay_term(hp, delta[act].norm(dim=-1), ref_norm[act])
        decay.sum().backward()
        final_nll[act] = nll_sum[act]
        final_kl[act] = kl_sum[act]
        final_prompt_nll_max[act] = prompt_nll_max[act]
        final_prompt_missed[act] = bare_missed[act]
        steps_taken[act] += 1
        log.append({"step": step, "active": len(active), "mean_nll": float(nll_sum[act].mean())})
        if progress:
            progress(step + 1, hp.steps, len(active))
        # Converged edits stop here: their δ is final and they leave the batch.
        converged = nll_sum[act] < hp.early_stop_nll
        if hp.early_stop_kl is not None:
            settled = kl_sum[act] < hp.early_stop_kl
            if hp.kl_patience is not None:
                # counted only while the target is said: the KL rises while δ grows towards it
                fell = kl_sum[act] < best_kl[act] * (1 - hp.kl_plateau)
                flat_steps[act] = torch.where(converged, torch.where(fell, 0, flat_steps[act] + 1), 0)
                best_kl[act] = torch.where(converged, torch.minimum(best_kl[act], kl_sum[act]), float("inf"))
                settled |= flat_steps[act] >= hp.kl_patience
            converged &= settled
        if hp.stop_at_argmax:
            converged |= not_argmax[act] == 0
        newly_done = act[converged]
        if step == hp.steps - 1:
            break
        done[newly_done] = True
        with torch.no_grad():
            frozen = delta[done].clone()  # Adam's momentum would otherwise keep moving finished rows
        opt.step()
        with torch.no_grad():
            delta[done] = frozen
            norms = delta.norm(dim=-1)
            scale = torch.where(norms > max_norm, max_norm / norms.clamp_min(1e-12), torch.ones_like(norms))
            delta.mul_(scale[:, None])
    release_freed_memory()
    return ValueResult(delta.detach().clone(), resid_ref, final_nll, final_kl, steps_taken, final_prompt_nll_max,
                       final_prompt_missed, log)
