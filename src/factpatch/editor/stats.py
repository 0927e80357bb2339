"""Second-moment statistics C = E[k kᵀ] of the MLP output projection's inputs, cached on disk.

C tells ROME and MEMIT which key directions the model already uses, so an edit can land where it
disturbs them least. It costs one pass over a corpus, so it is cached under
`cache_root()/stats/<model fingerprint>/<weight name>/<corpus digest>-n<samples>.safetensors`;
`FACTPATCH_STATS_CACHE` moves that folder on its own (say, to a larger disk) and leaves the fixture
where it is.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping
from pathlib import Path

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from safetensors.torch import load_file, save_file

from factpatch.core.atomic import atomic_path
from factpatch.core.patchfile import tensor_fingerprint
from factpatch.fixture.build import cache_root

from .adapters import Adapter
from .corpus import Corpus
from .prompts import pad_id


def model_fingerprint(model) -> str:
    return tensor_fingerprint(dict(model.state_dict()))


def stats_root() -> Path:
    env = os.environ.get("FACTPATCH_STATS_CACHE")
    return Path(env) if env else cache_root() / "stats"


def stats_path(fingerprint: str, weight_name: str, corpus: Corpus, n_samples: int | None, max_len: int) -> Path:
    n = len(corpus.head(n_samples))
    fp = fingerprint.split(":")[-1][:16]
    return stats_root() / fp / weight_name / f"{corpus.digest(n)[:16]}-n{n}-t{max_len}.safetensors"


def _progress(enabled: bool, what: str) -> Progress | contextlib.nullcontext:
    if not enabled:
        return contextlib.nullcontext()
    return Progress(
        TextColumn(f"[bold]{what}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("texts"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        transient=True,
    )


class Moments(Mapping):
    """layer -> C (float64 [k, k]). A cached layer's C is read from its file each time it is asked for
    (memory-mapped, released when the caller drops it), so an edit over five layers holds one at a
    time: at a real MLP width (5,632 in TinyLlama 1.1B, 14,336 in Llama 3 8B) each is 0.25-1.6 GB.
    Layers computed with `use_cache=False` are held."""

    def __init__(self, files: dict[int, Path], held: dict[int, torch.Tensor]):
        self._files = dict(files)
        self._held = held

    def __getitem__(self, layer: int) -> torch.Tensor:
        if layer in self._held:
            return self._held[layer]
        return load_file(str(self._path(layer)))["mom2"]

    def fresh(self, layer: int) -> torch.Tensor:
        """C in memory of its own, the caller's to overwrite (a solve can build λC + KᵀK in it instead of
        beside it); the file's mapping is let go once it is copied."""
        return self[layer].clone()

    def _path(self, layer: int) -> Path:
        path = self._files[layer]
        if not path.exists():
            raise FileNotFoundError(f"the covariance statistics of layer {layer} ({path}) were deleted during the "
                                    "edit; run it again to compute them")
        return path

    def __iter__(self) -> Iterator[int]:
        return iter(sorted({*self._files, *self._held}))

    def __len__(self) -> int:
        return len({*self._files, *self._held})


@torch.no_grad()
def second_moments(
    adapter: Adapter,
    tok,
    layers: list[int],
    corpus: Corpus,
    n_samples: int | None = None,
    *,
    max_len: int = 128,
    batch_size: int = 64,
    use_cache: bool = True,
    progress: bool = False,
    fingerprint: str | None = None,
) -> Moments:
    """C for every layer (`Moments`); cached layers are read, the rest computed in one pass and cached."""
    fingerprint = fingerprint or model_fingerprint(adapter.model)
    paths = {l: stats_path(fingerprint, adapter.param_name(l), corpus, n_samples, max_len) for l in layers}
    todo = [l for l in layers if not (use_cache and paths[l].exists())]
    if not todo:
        return Moments(paths, {})

    texts = corpus.head(n_samples)
    k_dims = {l: adapter.key_dim(l) for l in todo}
    sums = {l: torch.zeros(k_dims[l], k_dims[l], dtype=torch.float64) for l in todo}
    count = 0
    current_mask: list[torch.Tensor] = []

    def hook_for(layer):
        def hook(module, args):
            k = args[0].detach()
            sel = k[current_mask[0].bool()].to(torch.float64)  # real tokens only, never padding
            sums[layer].addmm_(sel.T, sel)

        return hook

    handles = [adapter.mlp_out(l).register_forward_pre_hook(hook_for(l)) for l in todo]
    try:
        with _progress(progress, f"covariance · layers {','.join(map(str, todo))}") as bar:
            task = bar.add_task("stats", total=len(texts)) if bar else None
            for s in range(0, len(texts), batch_size):
                chunk = texts[s : s + batch_size]
                enc = tok(chunk, truncation=True, max_length=max_len, padding=False)
                rows = enc["input_ids"]
                T = max(len(r) for r in rows)
                ids = torch.full((len(rows), T), pad_id(tok), dtype=torch.long)
                mask = torch.zeros((len(rows), T), dtype=torch.long)
                for b, r in enumerate(rows):
                    ids[b, : len(r)] = torch.tensor(r)
                    mask[b, : len(r)] = 1
                current_mask[:] = [mask]
                adapter.hidden_at(ids, mask)
                count += int(mask.sum())
                if bar:
                    bar.update(task, advance=len(chunk))
    finally:
        for h in handles:
            h.remove()

    held: dict[int, torch.Tensor] = {}
    for l in todo:
        mom2 = sums.pop(l).div_(max(1, count))
        if use_cache:
            _save_atomic(paths[l], mom2, count, len(texts))
        else:
            held[l] = mom2
        del mom2
    return Moments({l: p for l, p in paths.items() if l not in held}, held)


def _save_atomic(path: Path, mom2: torch.Tensor, tokens: int, texts: int) -> None:
    with atomic_path(path, durable=False) as tmp:  # a cache: rebuilt if lost
        save_file({"mom2": mom2.contiguous()}, tmp, metadata={"tokens": str(tokens), "texts": str(texts)})
