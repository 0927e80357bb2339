"""Which layers an edit writes to: an explicit list, the default for the model's depth, or a strategy.

`--layers` takes "3,4,5", "3-5", "default" or a strategy name. Strategies (such as one based on
causal tracing) register themselves in STRATEGIES; each gets the adapter, tokenizer, edits and
method and returns layer indices, which then pass the same checks as an explicit list.
"""

from __future__ import annotations

import math
from typing import Callable

from .adapters import Adapter

Strategy = Callable[[Adapter, object, list, str], list[int]]
STRATEGIES: dict[str, Strategy] = {}

# Only for a model that has no defaults of its own (model_defaults: an hparams file, or the fixture's
# causal trace): relative depths of the published settings. ROME edits a little below a fifth of the
# depth (GPT-J 5 of 28, Llama 3 8B 5 of 32), MEMIT a window up to about a third (GPT-J 3-8, Llama 3 8B 4-8).
ROME_DEPTH = 0.17
MEMIT_WINDOW = (0.1, 0.28)

# Methods that write exactly one layer (MEMIT through its own update, `--joint`, is one of them) take
# ROME's depth and single-layer candidates.
ONE_LAYER = {"rome": "ROME", "memit-joint": "MEMIT with --joint"}


class LayerError(ValueError):
    """The layer argument cannot be used with this model or method."""


def parse(text: str | None) -> str | list[int]:
    """'3,4,5' or '3-5' → [3, 4, 5]; None or 'default' → 'default'; any other word → a strategy name."""
    if text is None or text.strip() in ("", "default"):
        return "default"
    text = text.strip()
    if text[0].isalpha():
        return text
    out: list[int] = []
    try:
        for part in text.split(","):
            part = part.strip()
            if "-" in part[1:]:
                a, b = part.split("-", 1)
                out += list(range(int(a), int(b) + 1))
            else:
                out.append(int(part))
    except ValueError:
        raise LayerError(f"--layers {text!r}: expected a list like 3,4,5 or a range like 3-5") from None
    return sorted(set(out))


def default_layers(n_layers: int, method: str, defaults=None) -> list[int]:
    """The model's own defaults (model_defaults.ModelDefaults) when it has them, else the relative depths."""
    if defaults is not None:
        return defaults.layers_for("memit" if method == "memit" else "rome")
    if method in ONE_LAYER:
        return [math.floor(ROME_DEPTH * (n_layers - 1))]
    lo, hi = (round(f * (n_layers - 1)) for f in MEMIT_WINDOW)
    return list(range(lo, max(lo, hi) + 1))


def check(layers: list[int], n_layers: int, method: str) -> list[int]:
    for l in layers:
        if not 0 <= l < n_layers:
            raise LayerError(f"layer {l} is out of range: the model has layers 0..{n_layers - 1}")
    if not layers:
        raise LayerError("no layers to edit")
    if method in ONE_LAYER and len(layers) != 1:
        alternative = "use --method memit for several" if method == "rome" else "leave out --joint for several"
        raise LayerError(f"{ONE_LAYER[method]} edits exactly one layer, got {layers}; {alternative}")
    return layers


def resolve(choice: str | list[int], n_layers: int, method: str, adapter: Adapter | None = None, tok=None, edits=None,
            defaults=None) -> list[int]:
    """Layers for this edit; strategies run only here, after every input check has passed."""
    if isinstance(choice, list):
        return check(choice, n_layers, method)
    if choice == "default":
        return check(default_layers(n_layers, method, defaults), n_layers, method)
    if choice not in STRATEGIES:
        known = ", ".join(["default", *sorted(STRATEGIES)])
        raise LayerError(f"--layers {choice!r} is not available; use a list like 3,4,5 or one of: {known}")
    if adapter is None:
        return []  # validated later, when the model is loaded
    return check(STRATEGIES[choice](adapter, tok, edits, method), n_layers, method)
