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

# Relative depth of the edited layers, rounded down. The published settings put ROME a little below a
# fifth of the depth (GPT-J layer 5 of 28, Llama-7B 5 of 32; 0.15 gives 4 for both). On the fixture
# (6 layers, 50 single ROME edits) layer 0 gave 100 % efficacy / 89 % paraphrase, layer 1 94 / 79,
# layer 2 92 / 67. MEMIT writes from the bottom to a fifth of the depth (layers 0-1 on the fixture;
# 100 edits: layers 0-1 91 % efficacy and 23 points of neighbour accuracy lost, 0-2 90 % and 32,
# 0-3 88 % and 32, layer 0 alone 63 %). bench/results/editor_tuning.md has the tables.
ROME_DEPTH = 0.15
MEMIT_WINDOW = (0.0, 0.2)

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


def default_layers(n_layers: int, method: str) -> list[int]:
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


def resolve(choice: str | list[int], n_layers: int, method: str, adapter: Adapter | None = None, tok=None, edits=None) -> list[int]:
    """Layers for this edit; strategies run only here, after every input check has passed."""
    if isinstance(choice, list):
        return check(choice, n_layers, method)
    if choice == "default":
        return check(default_layers(n_layers, method), n_layers, method)
    if choice not in STRATEGIES:
        known = ", ".join(["default", *sorted(STRATEGIES)])
        raise LayerError(f"--layers {choice!r} is not available; use a list like 3,4,5 or one of: {known}")
    if adapter is None:
        return []  # validated later, when the model is loaded
    return check(STRATEGIES[choice](adapter, tok, edits, method), n_layers, method)
