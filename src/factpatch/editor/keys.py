"""The key side of an edit: the MLP projection's input at the subject's last token.

ROME reads the key averaged over context prefixes, so the edit fires for the subject in any context
rather than only right after <s>. MEMIT keeps one key row per context (`subject_keys_each`): the
least-squares solve then has to write the edit in each context, the plain prompt included.
ROME's fallback for a fact the subject's key cannot carry reads the key at the prompt's last token
instead (`written_context_keys(at="last")`), where the model predicts the answer. There the key reads
the question more than the subject, so that write is also held off the contexts the edit must leave
alone (`protected_context_keys`): its phrasings and keep prompts asked of its neighbours, and its keep
prompts.
"""

from __future__ import annotations

import torch

from .adapters import Adapter
from .hooks import capture_input, capture_output
from .prompts import Row, batch, encode, row_chunks
from .values import written_paraphrases

KEY_POSITIONS = ("subject", "last")


def _rows(tok, edits, prefixes: list[str]) -> list[Row]:
    return [encode(tok, e.prompt, e.subject, prefix=p) for e in edits for p in prefixes]


def subject_keys_each(adapter: Adapter, tok, layer: int, edits, prefixes: list[str], chunk: int = 2048,
                      max_tokens: int | None = None) -> torch.Tensor:
    """[n_edits × n_prefixes, key_dim] float64: the key in every context, edit-major."""
    return keys_of_rows(adapter, tok, layer, _rows(tok, edits, prefixes), chunk, max_tokens)


@torch.no_grad()
def keys_of_rows(adapter: Adapter, tok, layer: int, rows: list[Row], chunk: int = 2048,
                 max_tokens: int | None = None) -> torch.Tensor:
    """[len(rows), key_dim] float64: the key at each row's subject, in forward passes of at most `chunk`
    rows and `max_tokens` padded tokens."""
    out = []
    for s, e in row_chunks(rows, chunk, max_tokens):
        c = rows[s:e]
        ids, mask = batch(c, tok)
        with capture_input(adapter.mlp_out(layer), torch.arange(len(c)), torch.tensor([r.subject_last for r in c])) as got:
            adapter.hidden_at(ids, mask)
        out.append(got[0].to(torch.float64))
    return torch.cat(out)


def at_last_token(row: Row) -> Row:
    """The row with its key position moved from the subject's last token to the prompt's last token."""
    return Row(row.ids, row.target_start - 1, row.target_start)


def _keyed_at(rows: list[Row], at: str) -> list[Row]:
    """The rows with their key read at `at`: the subject's last token (as encoded) or the prompt's."""
    if at not in KEY_POSITIONS:
        raise ValueError(f"key position must be one of {KEY_POSITIONS}, got {at!r}")
    return [at_last_token(r) for r in rows] if at == "last" else rows


def written_paraphrase_keys(adapter: Adapter, tok, layer: int, edits, at: str = "subject",
                            max_tokens: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(keys [rows, key_dim] float64, edit [rows]): the key (at the subject's last token, or with
    at="last" the prompt's) in each paraphrase an edit is written in (its prompt and repeats left out),
    with the index of the edit each row belongs to."""
    rows, owner = [], []
    for i, e in enumerate(edits):
        for p in written_paraphrases(e.prompt, e.paraphrases):
            rows.append(encode(tok, p, e.subject))
            owner.append(i)
    if not rows:
        return torch.zeros(0, adapter.key_dim(layer), dtype=torch.float64), torch.zeros(0, dtype=torch.long)
    return keys_of_rows(adapter, tok, layer, _keyed_at(rows, at), max_tokens=max_tokens), torch.tensor(owner, dtype=torch.long)


def written_context_keys(adapter: Adapter, tok, layer: int, edits, prefixes: list[str], at: str = "subject") -> list[torch.Tensor]:
    """Per edit [rows, key_dim] float64: the key in every context the edit is written in: its prompt
    behind each prefix, then each of its written paraphrases; read at the subject's last token, or with
    at="last" at the prompt's last token."""
    each = keys_of_rows(adapter, tok, layer, _keyed_at(_rows(tok, edits, prefixes), at)).view(len(edits), len(prefixes), -1)
    extra, owner = written_paraphrase_keys(adapter, tok, layer, edits, at)
    return [torch.cat([each[i], extra[owner == i]]) for i in range(len(edits))]


def written_rows(tok, edits, prefixes: list[str]) -> tuple[list[Row], torch.Tensor]:
    """Every phrasing the edits are written in: each prompt behind every prefix (edit-major), then each
    written paraphrase; with the index of the edit each row belongs to."""
    rows = _rows(tok, edits, prefixes)
    owner = [i for i in range(len(edits)) for _ in prefixes]
    for i, e in enumerate(edits):
        for p in written_paraphrases(e.prompt, e.paraphrases):
            rows.append(encode(tok, p, e.subject))
            owner.append(i)
    return rows, torch.tensor(owner, dtype=torch.long)


def subject_keys(adapter: Adapter, tok, layer: int, edits, prefixes: list[str], chunk: int = 2048,
                 max_tokens: int | None = None) -> torch.Tensor:
    """[n_edits, key_dim] float64: the key at `layer`, averaged over the prefixes."""
    keys = subject_keys_each(adapter, tok, layer, edits, prefixes, chunk, max_tokens)
    return keys.view(len(edits), len(prefixes), -1).mean(1)


@torch.no_grad()
def residuals_of_rows(adapter: Adapter, tok, layer: int, rows: list[Row], chunk: int = 2048,
                      max_tokens: int | None = None) -> torch.Tensor:
    """[len(rows), d] float64: the block output at `layer` at each row's subject (passes as keys_of_rows)."""
    out = []
    for s, e in row_chunks(rows, chunk, max_tokens):
        c = rows[s:e]
        ids, mask = batch(c, tok)
        with capture_output(adapter.blocks[layer], torch.arange(len(c)), torch.tensor([r.subject_last for r in c])) as got:
            adapter.hidden_at(ids, mask)
        out.append(got[0].to(torch.float64))
    return torch.cat(out)


def protected_rows(tok, edits) -> tuple[list[Row], list[int]]:
    """The contexts each edit must leave alone, with the edit each belongs to: every phrasing it is
    written in (prompt and paraphrases) and each keep prompt asked of each of its neighbours, then its
    keep prompts asked of its subject."""
    rows, owner = [], []
    for i, e in enumerate(edits):
        phrasings = list(dict.fromkeys([e.prompt, *written_paraphrases(e.prompt, e.paraphrases), *e.keep]))
        asks = [(q, n) for n in dict.fromkeys(e.neighbours) if n != e.subject for q in phrasings]
        asks += [(k, e.subject) for k in dict.fromkeys(e.keep)]
        for template, subject in asks:
            rows.append(encode(tok, template, subject))
            owner.append(i)
    return rows, owner


def protected_context_keys(adapter: Adapter, tok, layer: int, edits, at: str = "last") -> list[torch.Tensor]:
    """Per edit [rows, key_dim] float64 (possibly no rows): the key in each context of `protected_rows`,
    read at `at`."""
    rows, owner = protected_rows(tok, edits)
    if not rows:
        return [torch.zeros(0, adapter.key_dim(layer), dtype=torch.float64) for _ in edits]
    keys = keys_of_rows(adapter, tok, layer, _keyed_at(rows, at))
    owner_t = torch.tensor(owner, dtype=torch.long)
    return [keys[owner_t == i] for i in range(len(edits))]
