"""Causal tracing (ROME, Meng et al. 2022): which hidden states carry a fact from the subject to the answer.

The subject tokens' embeddings are corrupted with Gaussian noise (a multiple of the standard deviation of
subject embeddings, measured on the model); then the clean hidden state of one (token, layer) is put
back and we see how much of the answer's probability returns:

    indirect effect = P(answer | corrupted, restored) − P(answer | corrupted)

for three kinds of state: the residual stream (a block's output), the MLP output and the attention
output. MLP and attention are restored over a window of layers around the traced one, because a single
sublayer's contribution is small next to the residual stream it adds to.

Every (kind, token, layer, noise sample) of a prompt is one row of a batch: a forward hook on each block
overwrites exactly the rows that restore that layer, so a prompt costs a few batched forwards, not a
Python loop over tokens and layers. Noise comes from a generator seeded per prompt, so the same seed
gives the same numbers whatever the chunking.
"""

from __future__ import annotations

import contextlib
from dataclasses import asdict, dataclass, field
from typing import Callable, Iterator

import torch
from torch import nn

from .adapters import Adapter, _get
from .prompts import TokenizationError, encode

KINDS = ("residual", "mlp", "attn")
KIND_LABELS = {"residual": "residual stream (block output)", "mlp": "MLP output", "attn": "attention output"}

# Token roles, in prompt order: prompts of different lengths and subjects line up by role.
ROLES = ("before subject", "subject (not last)", "subject last", "first after subject", "further tokens", "last token")

# Attention module per family (the MLP module is the parent of the adapter's MLP output projection).
_ATTN = {"llama": "self_attn", "mistral": "self_attn", "qwen2": "self_attn", "gpt2": "attn", "gptj": "attn"}


class TraceError(ValueError):
    """A prompt, subject or answer the trace cannot use; the message names which."""


@dataclass(frozen=True)
class TraceItem:
    template: str  # with {} for the subject
    subject: str
    answer: str  # the answer whose probability is traced (the model's current one)


@dataclass(frozen=True)
class TraceSettings:
    samples: int = 8  # noise samples per prompt
    noise_scale: float = 3.0  # noise std = noise_scale × std of subject embeddings
    window: int | None = None  # MLP/attention layers restored together; None: ~20 % of the depth
    seed: int = 0
    max_rows: int = 512  # rows per forward; bounds memory on larger models
    kinds: tuple[str, ...] = KINDS


def default_window(n_layers: int) -> int:
    # ROME used 10 of GPT-2 XL's 48 layers; the same share, at least one layer.
    return max(1, round(0.2 * n_layers))


def window_of(layer: int, window: int, n_layers: int) -> tuple[int, int]:
    """Half-open layer range [lo, hi) of `window` layers centred on `layer`, clipped to the model."""
    lo = max(0, layer - window // 2)
    return lo, min(n_layers, layer - window // 2 + window)


@dataclass
class PromptTrace:
    prompt: str
    subject: str
    answer: str
    tokens: list[str]
    roles: list[str]
    subject_span: tuple[int, int]  # first and last subject token (inclusive)
    answer_token: int
    p_clean: float
    p_corrupt: float
    restored: dict[str, torch.Tensor]  # kind → [tokens, layers] mean P(answer | corrupted, restored)

    def effect(self, kind: str) -> torch.Tensor:
        return self.restored[kind] - self.p_corrupt


@dataclass
class TraceResult:
    settings: TraceSettings
    n_layers: int
    window: int
    noise_std: float
    prompts: list[PromptTrace] = field(default_factory=list)

    def by_role(self, kind: str) -> tuple[list[str], torch.Tensor, list[int]]:
        """Indirect effect averaged by token role: (roles present, [roles, layers] matrix, prompts per role).

        Within a prompt the tokens of one role are averaged first, so a long subject does not outweigh
        a short one; then prompts are averaged.
        """
        sums = torch.zeros(len(ROLES), self.n_layers, dtype=torch.float64)
        counts = [0] * len(ROLES)
        for p in self.prompts:
            eff = p.effect(kind).double()
            for r, role in enumerate(ROLES):
                idx = [i for i, x in enumerate(p.roles) if x == role]
                if idx:
                    sums[r] += eff[idx].mean(0)
                    counts[r] += 1
        present = [r for r in range(len(ROLES)) if counts[r]]
        mat = torch.stack([sums[r] / counts[r] for r in present]) if present else torch.zeros(0, self.n_layers)
        return [ROLES[r] for r in present], mat, [counts[r] for r in present]

    def subject_last_profile(self, kind: str = "mlp") -> list[float]:
        """Mean indirect effect at the subject's last token, per layer: what the layer choice reads."""
        roles, mat, _ = self.by_role(kind)
        return mat[roles.index("subject last")].tolist()

    def to_json(self) -> dict:
        out: dict = {
            "settings": asdict(self.settings),
            "n_layers": self.n_layers,
            "window": self.window,
            "noise_std": self.noise_std,
            "noise_sigma": self.settings.noise_scale * self.noise_std,
            "mean_p_clean": sum(p.p_clean for p in self.prompts) / max(1, len(self.prompts)),
            "mean_p_corrupt": sum(p.p_corrupt for p in self.prompts) / max(1, len(self.prompts)),
            "by_role": {},
            "prompts": [],
        }
        for kind in self.settings.kinds:
            roles, mat, counts = self.by_role(kind)
            out["by_role"][kind] = {"roles": roles, "prompts_per_role": counts, "indirect_effect": mat.tolist()}
        for p in self.prompts:
            out["prompts"].append(
                {
                    "prompt": p.prompt,
                    "subject": p.subject,
                    "answer": p.answer,
                    "answer_token": p.answer_token,
                    "tokens": p.tokens,
                    "roles": p.roles,
                    "subject_span": list(p.subject_span),
                    "p_clean": p.p_clean,
                    "p_corrupt": p.p_corrupt,
                    "restored": {k: v.tolist() for k, v in p.restored.items()},
                    "indirect_effect": {k: p.effect(k).tolist() for k in p.restored},
                }
            )
        return out


def _parts(adapter: Adapter) -> tuple[list[nn.Module], list[nn.Module], list[nn.Module]]:
    mt = adapter.model.config.model_type
    mlp_path = adapter.family.mlp_out.rsplit(".", 1)[0]
    blocks = list(adapter.blocks)
    return blocks, [_get(b, mlp_path) for b in blocks], [_get(b, _ATTN[mt]) for b in blocks]


def _first(output):
    return output[0] if isinstance(output, tuple) else output


def _replace_first(output, new):
    return (new, *output[1:]) if isinstance(output, tuple) else new


@dataclass(frozen=True)
class _Prompt:
    ids: list[int]
    subject: tuple[int, int]
    answer_token: int
    roles: list[str]


def _roles(n: int, first: int, last: int) -> list[str]:
    out = []
    for i in range(n):
        if i == last:
            out.append("subject last")
        elif i == n - 1:
            out.append("last token")
        elif first <= i < last:
            out.append("subject (not last)")
        elif i < first:
            out.append("before subject")
        elif i == last + 1:
            out.append("first after subject")
        else:
            out.append("further tokens")
    return out


def _prepare(tok, item: TraceItem, where: str) -> _Prompt:
    """Token ids, subject span and first answer token; clear errors for what cannot be traced."""
    if item.template.count("{}") != 1:
        raise TraceError(f"{where}: prompt {item.template!r} must contain {{}} (the subject) exactly once")
    if not item.subject.strip():
        raise TraceError(f"{where}: the subject is empty")
    if not item.answer or not item.answer.strip():
        raise TraceError(f"{where}: no answer to trace for {item.template.replace('{}', item.subject)!r}")
    try:
        row = encode(tok, item.template, item.subject, target=item.answer)
    except TokenizationError as e:
        raise TraceError(f"{where}: {e}") from None
    at = item.template.index("{}")
    s0, s1 = at, at + len(item.subject)
    prompt_ids = row.ids[: row.target_start]
    offsets = tok(item.template.replace("{}", item.subject), return_offsets_mapping=True)["offset_mapping"]
    subj = [i for i, (a, b) in enumerate(offsets[: len(prompt_ids)]) if b > a and a < s1 and b > s0]
    if not subj or subj[-1] != row.subject_last:
        raise TraceError(f"{where}: subject {item.subject!r} is not found in the tokens of {item.template!r}")
    return _Prompt(prompt_ids, (subj[0], subj[-1]), row.target_ids[0], _roles(len(prompt_ids), subj[0], subj[-1]))


@torch.no_grad()
def noise_std(adapter: Adapter, tok, subjects: list[str]) -> float:
    """Standard deviation of the input embeddings of these subjects' tokens (all entries pooled)."""
    emb = adapter.model.get_input_embeddings().weight
    ids: list[int] = []
    for s in dict.fromkeys(subjects):
        ids += tok(s, add_special_tokens=False)["input_ids"]
    if not ids:
        raise TraceError("no subject tokens to measure the embedding noise on")
    return float(emb[torch.tensor(ids)].float().std())


@contextlib.contextmanager
def _hooks(pairs: list[tuple[nn.Module, Callable]]) -> Iterator[None]:
    handles = [m.register_forward_hook(h) for m, h in pairs]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


@torch.no_grad()
def _clean_states(adapter: Adapter, ids: torch.Tensor, parts) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Per kind [layers, tokens, d] clean states of one prompt, and its last-position logits."""
    got: dict[str, list[torch.Tensor]] = {k: [] for k in KINDS}

    def keep(kind):
        return lambda mod, args, output: got[kind].append(_first(output)[0].detach().clone())

    pairs = [(m, keep(k)) for k, mods in zip(KINDS, parts) for m in mods]
    with _hooks(pairs):
        hidden = adapter.hidden_at(ids)
    return {k: torch.stack(v) for k, v in got.items()}, adapter.head(hidden[:, -1]).float()


def _jobs(first: int, n_tokens: int, n_layers: int, window: int, kinds: tuple[str, ...]) -> list[tuple[int, int, int, int, int]]:
    """(kind index, token, layer traced, restore lo, restore hi); kind −1 is the corrupted baseline.

    Tokens before `first` (the first corrupted one) are left out: in a causal model their states are
    the same in the clean and the corrupted run, so restoring them changes nothing (effect exactly 0).
    """
    jobs = [(-1, 0, 0, 0, 0)]
    for k in kinds:
        ki = KINDS.index(k)
        for layer in range(n_layers):
            lo, hi = (layer, layer + 1) if k == "residual" else window_of(layer, window, n_layers)
            for t in range(first, n_tokens):
                jobs.append((ki, t, layer, lo, hi))
    return jobs


@torch.no_grad()
def _trace_prompt(adapter, tok, p: _Prompt, item: TraceItem, sigma: float, settings: TraceSettings, window: int,
                  parts, gen: torch.Generator, tick: Callable[[int], None]) -> PromptTrace:
    L, T, S = adapter.n_layers, len(p.ids), settings.samples
    ids = torch.tensor([p.ids])
    clean, logits = _clean_states(adapter, ids, parts)
    p_clean = float(torch.softmax(logits, -1)[0, p.answer_token])
    s0, s1 = p.subject
    d = adapter.model.get_input_embeddings().weight.shape[1]
    noise = torch.randn(S, s1 - s0 + 1, d, generator=gen) * sigma

    jobs = _jobs(s0, T, L, window, settings.kinds)
    # Every job is repeated once per noise sample: row = job × S + sample.
    table = torch.tensor(jobs, dtype=torch.long).repeat_interleave(S, 0)
    sample = torch.arange(len(jobs) * S) % S
    probs = torch.empty(len(table), dtype=torch.float64)
    emb = adapter.model.get_input_embeddings()

    for c0 in range(0, len(table), settings.max_rows):
        tab, smp = table[c0 : c0 + settings.max_rows], sample[c0 : c0 + settings.max_rows]
        R = len(tab)

        def corrupt(mod, args, output):
            out = output.clone()
            out[:, s0 : s1 + 1] += noise[smp].to(out.dtype)
            return out

        def restore(kind_index: int, layer: int):
            hit = (tab[:, 0] == kind_index) & (tab[:, 3] <= layer) & (layer < tab[:, 4])
            rows = hit.nonzero().squeeze(1)
            pos = tab[rows, 1]
            src = clean[KINDS[kind_index]][layer]

            def hook(mod, args, output):
                if rows.numel() == 0:
                    return output
                out = _first(output).clone()
                out[rows, pos] = src[pos].to(out.dtype)
                return _replace_first(output, out)

            return hook

        pairs = [(emb, corrupt)]
        for k in settings.kinds:
            ki = KINDS.index(k)
            pairs += [(m, restore(ki, layer)) for layer, m in enumerate(parts[ki])]
        with _hooks(pairs):
            hidden = adapter.hidden_at(ids.expand(R, T))
        probs[c0 : c0 + R] = torch.softmax(adapter.head(hidden[:, -1]).float(), -1)[:, p.answer_token].double()
        tick(R)

    per_job = probs.view(len(jobs), S).mean(1)
    restored: dict[str, torch.Tensor] = {}
    n = T - s0
    j = 1
    for k in settings.kinds:
        full = per_job[0].repeat(T, L)  # tokens before the subject: the corrupted run itself
        full[s0:] = per_job[j : j + L * n].view(L, n).T
        restored[k] = full.float()  # [tokens, layers]
        j += L * n
    return PromptTrace(
        prompt=item.template.replace("{}", item.subject),
        subject=item.subject,
        answer=item.answer,
        tokens=tok.convert_ids_to_tokens(p.ids),
        roles=p.roles,
        subject_span=p.subject,
        answer_token=p.answer_token,
        p_clean=p_clean,
        p_corrupt=float(per_job[0]),
        restored=restored,
    )


def trace(
    adapter: Adapter,
    tok,
    items: list[TraceItem],
    settings: TraceSettings = TraceSettings(),
    noise_subjects: list[str] | None = None,
    on_progress: Callable[[int, int], None] | None = None,
) -> TraceResult:
    """Trace every item; every prompt is checked before any forward pass runs."""
    if not items:
        raise TraceError("nothing to trace: no prompts were given")
    if settings.samples < 1:
        raise TraceError(f"samples must be at least 1, got {settings.samples}")
    for k in settings.kinds:
        if k not in KINDS:
            raise TraceError(f"unknown kind {k!r}; choose from {', '.join(KINDS)}")
    if adapter.model.config.model_type not in _ATTN:
        raise TraceError(f"tracing does not know the attention module of {adapter.model.config.model_type!r}")
    prepared = [_prepare(tok, it, f"prompt {i} ({it.subject!r})") for i, it in enumerate(items)]
    L = adapter.n_layers
    window = settings.window or default_window(L)
    if not 1 <= window <= L:
        raise TraceError(f"window {window} must be between 1 and the model's {L} layers")
    std = noise_std(adapter, tok, noise_subjects or [it.subject for it in items])
    parts = _parts(adapter)
    total = sum(len(_jobs(p.subject[0], len(p.ids), L, window, settings.kinds)) * settings.samples for p in prepared)
    done = 0

    def tick(n: int) -> None:
        nonlocal done
        done += n
        if on_progress:
            on_progress(done, total)

    result = TraceResult(settings, L, window, std)
    for i, (p, it) in enumerate(zip(prepared, items)):
        gen = torch.Generator().manual_seed(settings.seed * 1_000_003 + i)
        result.prompts.append(_trace_prompt(adapter, tok, p, it, settings.noise_scale * std, settings, window, parts, gen, tick))
    return result


def items_for_edits(adapter: Adapter, tok, edits) -> list[TraceItem]:
    """What each edit's prompt answers now: target_old where the spec gives it, else the model's own answer."""
    from .scoring import greedy_answers

    if not edits:
        raise TraceError("the spec holds no edits to trace")
    answers: list[str | None] = [e.target_old for e in edits]
    need = [i for i, a in enumerate(answers) if not a]
    if need:
        for i in need:  # a subject missing from the prompt fails here, with the edit named
            _check_subject(tok, edits[i], i)
        got = greedy_answers(adapter, tok, [(edits[i].prompt, edits[i].subject) for i in need])
        for i, a in zip(need, got):
            answers[i] = a
    return [TraceItem(e.prompt, e.subject, a or "") for e, a in zip(edits, answers)]


def _check_subject(tok, e, i: int) -> None:
    try:
        encode(tok, e.prompt, e.subject)
    except TokenizationError as err:
        raise TraceError(f"edit {i} ({e.subject!r}): {err}") from None
