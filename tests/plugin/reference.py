"""What transformers says about the same model and patch: the reference the engine is held to."""

from __future__ import annotations

from pathlib import Path

import torch

from factpatch.core import patchfile


class Reference:
    def __init__(self, model_dir: str | Path):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()
        self.tok = AutoTokenizer.from_pretrained(str(model_dir))
        self._base = {k: v.detach().clone() for k, v in self.model.state_dict().items()}

    def set_patch(self, patch: patchfile.Patch | None) -> None:
        state = self.model.state_dict()
        with torch.no_grad():
            for k, v in self._base.items():
                state[k].copy_(v)
            if patch is not None:
                patchfile.apply_to_state_dict(state, patch)

    @torch.no_grad()
    def token_logprobs(self, prompt: str, completion_ids: list[int]) -> list[float]:
        """log p(completion token i | prompt, earlier completion tokens), as the engine reports them."""
        ids = self.tok(prompt)["input_ids"] + completion_ids
        logits = self.model(torch.tensor([ids])).logits[0].float()
        lp = torch.log_softmax(logits, -1)
        n = len(ids) - len(completion_ids)
        return [lp[n - 1 + i, t].item() for i, t in enumerate(completion_ids)]

    @torch.no_grad()
    def greedy(self, prompt: str, max_tokens: int) -> str:
        ids = self.tok(prompt, return_tensors="pt")["input_ids"]
        out = self.model.generate(ids, max_new_tokens=max_tokens, do_sample=False)
        return self.tok.decode(out[0, ids.shape[1]:])
