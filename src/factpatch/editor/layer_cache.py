"""`--layers auto`'s choice, kept per model and relation so its trace and sweep are paid once.

Where a fact is recalled depends on the model and on the relation; the edits of one batch only sample
it. So a choice is stored under `cache_root()/layer_choice/<model>/<key>.json`, the key hashing what the
trace and the validation sweep depend on: the method, the sorted relations of the batch, the sweep's
own settings (`AutoParams`), the method's settings the candidates are edited with, and the covariance
texts. A later batch asking about the same relations of the same model reads it back in milliseconds,
whichever edits it holds. A changed checkpoint is another model; another relation set or other settings
is another key. `EditOptions.layer_cache=False` (`factpatch edit --retrace`) runs them again and stores
the new choice over the old one.

The patch manifest's `hparams["layer_choice"]` is the stored report, with a `cache` entry saying
whether it was read back, from where, and when it was made.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable

from factpatch.core.atomic import atomic_path
from factpatch.fixture.build import cache_root

from .auto_layers import AutoParams, ChosenLayers

CHOICE_VERSION = 1  # bump when the trace or the sweep changes what they would choose


def layer_cache_root() -> Path:
    return cache_root() / "layer_choice"


def choice_key(method: str, relations: list[str], method_params: Any, n_samples: int | None, corpus_digest: str,
               params: AutoParams = AutoParams()) -> dict[str, Any]:
    """What a stored choice must match to be read back for a new batch."""
    return {"version": CHOICE_VERSION, "method": method, "relations": sorted(set(relations)),
            "auto": asdict(params), "method_params": asdict(method_params), "n_samples": n_samples,
            "corpus": corpus_digest}


def choice_path(model_identity: str, key: dict[str, Any]) -> Path:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:24]
    return layer_cache_root() / model_identity.split(":")[-1][:24] / f"{digest}.json"


def cached_choice(model_identity: str, key: dict[str, Any], n_layers: int) -> ChosenLayers | None:
    """The stored choice for this key, or None (none stored, or one that cannot be read or names layers
    this model lacks: it is chosen again and overwritten)."""
    path = choice_path(model_identity, key)
    try:
        stored = json.loads(path.read_text())
        if stored["key"] != json.loads(json.dumps(key, default=str)):
            return None  # a hash collision, or a file put there by hand
        layers = [int(l) for l in stored["report"]["chosen"]]
        report = dict(stored["report"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not layers or not all(0 <= l < n_layers for l in layers):
        return None
    report["cache"] = {"hit": True, "path": str(path), "made": stored.get("made"), "relations": key["relations"]}
    return ChosenLayers(layers, report)


def store_choice(model_identity: str, key: dict[str, Any], chosen: ChosenLayers) -> Path | None:
    path = choice_path(model_identity, key)
    record = {"key": key, "made": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "report": chosen.report}
    try:
        with atomic_path(path, durable=False) as tmp:  # a cache: chosen again if lost
            tmp.write_text(json.dumps(record, indent=1, default=str))
    except OSError:
        return None  # an unwritable cache costs the next call its sweep, nothing else
    return path


def choose_once(model_identity: str, key: dict[str, Any], n_layers: int, choose: Callable[[], ChosenLayers],
                use_cache: bool = True) -> ChosenLayers:
    """The stored choice for the key, else `choose()` — stored for the next batch either way."""
    if use_cache:
        hit = cached_choice(model_identity, key, n_layers)
        if hit is not None:
            return hit
    chosen = choose()
    path = store_choice(model_identity, key, chosen)
    chosen.report["cache"] = {"hit": False, "path": str(path) if path else None, "relations": key["relations"],
                              **({} if use_cache else {"retraced": True})}
    return chosen
