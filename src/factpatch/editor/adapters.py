"""Model-family adapters: where the MLP output projection lives, its orientation, and the body and head.

ROME and MEMIT edit one matrix per layer, the MLP's output projection W [out=hidden, in=mlp]:
its input is the "key" k, its output the "value" added to the residual stream. Every family
names and stores that matrix differently; the adapter hides that, and nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


class UnsupportedModelError(ValueError):
    """The model's architecture has no adapter."""


@dataclass(frozen=True)
class Family:
    model_types: tuple[str, ...]
    layers: str  # attribute path from the causal-LM to the list of blocks
    mlp_out: str  # attribute path from a block to the MLP output projection
    body: str  # attribute path to the base model (embeddings → blocks → final norm)
    final_norm: str
    head: str
    conv1d: bool  # weight stored [in, out] (GPT-2's Conv1D) rather than nn.Linear's [out, in]


FAMILIES: dict[str, Family] = {}
for _f in (
    Family(("llama", "mistral", "qwen2"), "model.layers", "mlp.down_proj", "model", "model.norm", "lm_head", False),
    Family(("gpt2",), "transformer.h", "mlp.c_proj", "transformer", "transformer.ln_f", "lm_head", True),
    Family(("gptj",), "transformer.h", "mlp.fc_out", "transformer", "transformer.ln_f", "lm_head", False),
):
    for _t in _f.model_types:
        FAMILIES[_t] = _f


def family_for(config) -> Family:
    """The family of a transformers config; raises UnsupportedModelError naming what is supported."""
    mt = getattr(config, "model_type", None)
    if mt not in FAMILIES:
        raise UnsupportedModelError(
            f"unsupported architecture {mt!r}; the editor supports {', '.join(sorted(FAMILIES))}"
        )
    return FAMILIES[mt]


def _get(obj, path: str):
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


class Adapter:
    """A causal-LM seen through its family: blocks, editable matrices, body and head."""

    def __init__(self, model: nn.Module):
        self.model = model
        self.family = family_for(model.config)
        self.blocks: nn.ModuleList = _get(model, self.family.layers)

    @property
    def n_layers(self) -> int:
        return len(self.blocks)

    @property
    def conv1d(self) -> bool:
        return self.family.conv1d

    def check_layer(self, layer: int) -> None:
        if not 0 <= layer < self.n_layers:
            raise ValueError(f"layer {layer} is out of range: the model has layers 0..{self.n_layers - 1}")

    def mlp_out(self, layer: int) -> nn.Module:
        return _get(self.blocks[layer], self.family.mlp_out)

    def param_name(self, layer: int) -> str:
        """The Hugging Face checkpoint name of the layer's MLP output weight."""
        return f"{self.family.layers}.{layer}.{self.family.mlp_out}.weight"

    def weight(self, layer: int) -> torch.Tensor:
        """The MLP output weight as stored (a Parameter; [in, out] for Conv1D)."""
        return self.mlp_out(layer).weight

    def editable_layers(self) -> list[int]:
        """Layers whose MLP output weight is not all zeros: an MLP held at zero has no keys to write through."""
        return [l for l in range(self.n_layers) if self.weight(l).any()]

    def linear_weight(self, layer: int) -> torch.Tensor:
        """The weight in nn.Linear orientation [out, in], as a float32 copy."""
        w = self.weight(layer).detach().to(torch.float32)
        return w.T.contiguous() if self.conv1d else w.clone()

    def key_dim(self, layer: int) -> int:
        w = self.weight(layer)
        return int(w.shape[0] if self.conv1d else w.shape[1])

    def hidden_dim(self) -> int:
        w = self.weight(0)
        return int(w.shape[1] if self.conv1d else w.shape[0])

    @property
    def body(self) -> nn.Module:
        """The base model: token ids → final-normed hidden states."""
        return _get(self.model, self.family.body)

    @property
    def final_norm(self) -> nn.Module:
        return _get(self.model, self.family.final_norm)

    @property
    def head(self) -> nn.Module:
        return _get(self.model, self.family.head)

    def conv1d_names(self) -> list[str]:
        """Checkpoint names stored transposed, for patchfile.apply_to_state_dict."""
        return [self.param_name(i) for i in range(self.n_layers)] if self.conv1d else []

    def hidden_at(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Final-normed hidden states [B, T, d] without the vocabulary projection."""
        out = self.body(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
        return out[0] if isinstance(out, tuple) else out.last_hidden_state
