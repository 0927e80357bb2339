"""Turning (prefix, prompt template, subject, target) into token rows the editor can index.

Positions are found from character offsets, not by re-tokenising pieces, so the subject's last token
and the target's tokens are exactly those of the full text the model sees.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


class TokenizationError(ValueError):
    """A subject, prompt or target does not map onto the tokenizer's vocabulary."""


@dataclass(frozen=True)
class Row:
    ids: list[int]  # with the tokenizer's special tokens (BOS)
    subject_last: int  # index of the subject's last token
    target_start: int  # index of the first target token; == len(ids) when there is no target

    @property
    def n_target(self) -> int:
        return len(self.ids) - self.target_start

    @property
    def target_ids(self) -> list[int]:
        return self.ids[self.target_start :]


def _unk(tok) -> int | None:
    return getattr(tok, "unk_token_id", None)


def encode(tok, template: str, subject: str, prefix: str = "", target: str | None = None) -> Row:
    """Tokenise prefix + template(subject) [+ " " + target] and locate the subject and the target."""
    at = template.index("{}")
    prompt = prefix + template[:at] + subject + template[at + 2 :]
    s_start = len(prefix) + at
    s_end = s_start + len(subject)
    text = prompt if target is None else prompt + " " + target
    enc = tok(text, return_offsets_mapping=True)
    ids, offsets = enc["input_ids"], enc["offset_mapping"]
    subject_tokens = [i for i, (a, b) in enumerate(offsets) if b > a and a < s_end and b > s_start]
    if not subject_tokens:
        raise TokenizationError(f"subject {subject!r} maps to no token in {prompt!r}")
    unk = _unk(tok)
    if unk is not None and any(ids[i] == unk for i in subject_tokens):
        raise TokenizationError(f"subject {subject!r} is not tokenisable: part of it is not in the vocabulary")
    if target is None:
        return Row(ids, subject_tokens[-1], len(ids))
    target_tokens = [i for i, (a, b) in enumerate(offsets) if b > a and a >= len(prompt)]
    # Trailing special tokens (EOS some tokenizers append) have empty spans and are dropped here.
    if not target_tokens or target_tokens != list(range(target_tokens[0], target_tokens[-1] + 1)):
        raise TokenizationError(f"target {target!r} maps to no contiguous tokens after {prompt!r}")
    if unk is not None and any(ids[i] == unk for i in target_tokens):
        raise TokenizationError(f"target {target!r} is not tokenisable: part of it is not in the vocabulary")
    ids = ids[: target_tokens[-1] + 1]
    return Row(ids, subject_tokens[-1], target_tokens[0])


def pad_id(tok) -> int:
    for cand in (tok.pad_token_id, tok.eos_token_id, 0):
        if cand is not None:
            return int(cand)
    return 0


def batch(rows: list[Row], tok) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ids and attention mask; right padding keeps every real token's position."""
    T = max(len(r.ids) for r in rows)
    ids = torch.full((len(rows), T), pad_id(tok), dtype=torch.long)
    mask = torch.zeros((len(rows), T), dtype=torch.long)
    for b, r in enumerate(rows):
        ids[b, : len(r.ids)] = torch.tensor(r.ids)
        mask[b, : len(r.ids)] = 1
    return ids, mask


def row_chunks(rows: list[Row], max_rows: int, max_tokens: int | None = None) -> list[tuple[int, int]]:
    """(start, end) chunks of `rows` in their order: at most `max_rows` rows each and, with `max_tokens`, at
    most that many tokens once padded to the chunk's longest row (one row at least, whatever its length)."""
    out, s, n = [], 0, len(rows)
    while s < n:
        e, longest = s + 1, len(rows[s].ids)
        while e < n and e - s < max_rows:
            longer = max(longest, len(rows[e].ids))
            if max_tokens is not None and (e + 1 - s) * longer > max_tokens:
                break
            e, longest = e + 1, longer
        out.append((s, e))
        s = e
    return out


def target_positions(rows: list[Row]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(row index, logit position, target token) for every target token of every row."""
    b_idx, pos, tgt = [], [], []
    for b, r in enumerate(rows):
        for j in range(r.target_start, len(r.ids)):
            b_idx.append(b)
            pos.append(j - 1)  # the logit at j-1 predicts token j
            tgt.append(r.ids[j])
    return torch.tensor(b_idx), torch.tensor(pos), torch.tensor(tgt)


@torch.no_grad()
def context_prefixes(model, tok, n: int, lengths: tuple[int, ...] = (5, 10), seed: int = 0) -> list[str]:
    """Short texts sampled from the model itself, each ending in ". ", to vary the subject's context.

    The empty prefix always comes first. Sampling uses its own generator so results are reproducible.
    """
    out = [""]
    if n <= 0:
        return out
    gen = torch.Generator().manual_seed(seed)
    bos = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
    per = [n // len(lengths) + (1 if i < n % len(lengths) else 0) for i in range(len(lengths))]
    for length, count in zip(lengths, per):
        if count == 0:
            continue
        ids = torch.full((count, 1), bos, dtype=torch.long)
        for _ in range(length):
            logits = model(input_ids=ids, use_cache=False).logits[:, -1].float()
            # Never sample special tokens or braces into a prefix.
            for sid in tok.all_special_ids:
                logits[:, sid] = -float("inf")
            top = logits.topk(min(5, logits.shape[-1]), dim=-1)
            pick = torch.multinomial(torch.softmax(top.values, -1), 1, generator=gen)
            ids = torch.cat([ids, top.indices.gather(1, pick)], dim=1)
        for row in ids[:, 1:]:
            text = tok.decode(row, skip_special_tokens=True).replace("{", " ").replace("}", " ").strip()
            out.append(text + ". ")
    return out
