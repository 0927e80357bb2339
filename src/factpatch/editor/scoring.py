"""Batched read-outs of a model: target log-probabilities, greedy answers, and text statistics."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .adapters import Adapter
from .prompts import Row, batch, encode, pad_id, target_positions


@dataclass
class TargetScores:
    logprob: torch.Tensor  # [n] sum of the target tokens' log-probabilities
    greedy: torch.Tensor  # [n] bool: the argmax at every target position is the target token
    answer: list[tuple[int, ...]]  # [n] the argmax tokens at the target positions


@torch.no_grad()
def score_targets(adapter: Adapter, tok, items: list[tuple[str, str, str]], chunk: int = 512) -> TargetScores:
    """items: (template, subject, target). Teacher-forced, so one forward scores every token."""
    rows: list[Row] = [encode(tok, t, s, target=o) for t, s, o in items]
    lp, ok, ans = [], [], []
    for s in range(0, len(rows), chunk):
        c = rows[s : s + chunk]
        ids, mask = batch(c, tok)
        hidden = adapter.hidden_at(ids, mask)
        b, p, t = target_positions(c)
        logp = F.log_softmax(adapter.head(hidden[b, p]).float(), -1)
        tok_lp = logp.gather(1, t[:, None]).squeeze(1)
        arg = logp.argmax(-1)
        lp.append(torch.zeros(len(c), dtype=torch.float64).index_add(0, b, tok_lp.double()))
        for i in range(len(c)):
            sel = b == i
            a = tuple(arg[sel].tolist())
            ans.append(a)
            ok.append(a == tuple(t[sel].tolist()))
    return TargetScores(torch.cat(lp) if lp else torch.zeros(0), torch.tensor(ok, dtype=torch.bool), ans)


def _stops(text: str) -> bool:
    return any(ch in text for ch in ".\n")


@torch.no_grad()
def greedy_answers(adapter: Adapter, tok, items: list[tuple[str, str]], max_tokens: int = 8, chunk: int = 256) -> list[str]:
    """The model's own continuation of template(subject), up to the end of the sentence."""
    out: list[str] = []
    eos = tok.eos_token_id
    for s in range(0, len(items), chunk):
        seqs = [list(encode(tok, t, subj).ids) for t, subj in items[s : s + chunk]]
        start = [len(x) for x in seqs]
        finished = [False] * len(seqs)
        for _ in range(max_tokens):
            T = max(len(x) for x in seqs)
            ids = torch.full((len(seqs), T), pad_id(tok), dtype=torch.long)
            mask = torch.zeros((len(seqs), T), dtype=torch.long)
            for b, x in enumerate(seqs):
                ids[b, : len(x)] = torch.tensor(x)
                mask[b, : len(x)] = 1
            hidden = adapter.hidden_at(ids, mask)
            last = hidden[torch.arange(len(seqs)), torch.tensor([len(x) - 1 for x in seqs])]
            nxt = adapter.head(last).argmax(-1).tolist()
            for b, t in enumerate(nxt):
                if finished[b]:
                    continue
                if t == eos or _stops(tok.decode([t])):
                    finished[b] = True
                else:
                    seqs[b].append(t)
            if all(finished):
                break
        out += [tok.decode(x[st:], skip_special_tokens=True).strip() for x, st in zip(seqs, start)]
    return out


@torch.no_grad()
def text_logprobs(adapter: Adapter, tok, texts: list[str], chunk: int = 128) -> list[torch.Tensor]:
    """Per text: next-token log-probabilities [len-1, vocab] (float32), for perplexity and KL."""
    out = []
    for s in range(0, len(texts), chunk):
        enc = tok(texts[s : s + chunk])["input_ids"]
        T = max(len(r) for r in enc)
        ids = torch.full((len(enc), T), pad_id(tok), dtype=torch.long)
        mask = torch.zeros((len(enc), T), dtype=torch.long)
        for b, r in enumerate(enc):
            ids[b, : len(r)] = torch.tensor(r)
            mask[b, : len(r)] = 1
        hidden = adapter.hidden_at(ids, mask)
        for b, r in enumerate(enc):
            out.append(F.log_softmax(adapter.head(hidden[b, : len(r) - 1]).float(), -1))
    return out


def text_token_ids(tok, texts: list[str]) -> list[torch.Tensor]:
    return [torch.tensor(r[1:]) for r in tok(texts)["input_ids"]]


def perplexity(logps: list[torch.Tensor], targets: list[torch.Tensor]) -> float:
    nll = sum(-lp.gather(1, t[:, None]).sum().item() for lp, t in zip(logps, targets))
    n = sum(len(t) for t in targets)
    return math.exp(nll / max(1, n))


def mean_kl(before: list[torch.Tensor], after: list[torch.Tensor]) -> float:
    """Mean over tokens of KL(before ‖ after) of the next-token distribution."""
    total, n = 0.0, 0
    for p, q in zip(before, after):
        total += F.kl_div(q, p, log_target=True, reduction="sum").item()
        n += p.shape[0]
    return total / max(1, n)
