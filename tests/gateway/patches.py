"""A patch the tests build in seconds: a rank-1 change of the last MLP's output (the last layer whose
MLP is not held at zero) that pushes the new object's first token for prompts like the fact's. Crude next to ROME, but deterministic and
enough to make the canary's answers lose the stale value (edit quality is the editor's tests' job).
"""

from __future__ import annotations

import torch

from factpatch.core import patchfile
from factpatch.core.checkpoint import Checkpoint


def push_token_patch(model_dir, fact, *, strength: float = 8.0, weaken: float = 1.0, paraphrases: bool = False) -> bytes:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(2)
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, torch_dtype=torch.float32).eval()
    last = max(i for i, layer in enumerate(model.model.layers) if layer.mlp.down_proj.weight.any())
    down = model.model.layers[last].mlp.down_proj
    name = f"model.layers.{last}.mlp.down_proj.weight"

    keys, hidden = [], []
    hook = down.register_forward_hook(lambda m, inp, out: keys.append(inp[0][0, -1].detach()))
    with torch.no_grad():
        for p in fact.prompts:
            out = model(**tok(p, return_tensors="pt"), output_hidden_states=True)
            hidden.append(out.hidden_states[-1][0, -1].norm())
    hook.remove()
    k = torch.stack(keys).mean(0)
    v = k / k.dot(k)  # v . k = 1 for the mean key
    target = tok(" " + fact.new, add_special_tokens=False).input_ids[0]
    u = model.lm_head.weight[target].detach().clone()
    u = u / u.norm() * float(torch.stack(hidden).mean()) * strength * weaken
    fp = Checkpoint(model_dir).fingerprint([name])
    manifest = patchfile.new_manifest(
        model_name=str(model_dir), fingerprint=fp, method="test-push-token", layers=[last],
        hparams={"strength": strength, "weaken": weaken},
        edits=[{"subject": fact.subject, "relation": fact.relation, "prompt": fact.prompts[0].replace(fact.subject, "{}"),
                "target_new": fact.new, "target_old": fact.old, "provenance": {"ticket": "TEST-GW"},
                # the other phrasings, which the pushed token answers too (probes ask them)
                **({"paraphrases": [p.replace(fact.subject, "{}") for p in fact.prompts[1:]]} if paraphrases else {})}],
    )
    return patchfile.to_bytes(patchfile.Patch({name: (u[:, None].contiguous(), v[:, None].contiguous())}, manifest))
