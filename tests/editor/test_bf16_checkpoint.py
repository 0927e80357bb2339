"""Half-precision checkpoints, as real ones are stored (bf16, fp16): the editor holds the model in the
stored dtype, fingerprints the stored bytes (what a shard serving it fingerprints), evaluates the patch
as the shard will hold it (rounded to that dtype), records how much of ΔW the rounding loses; a real
vLLM shard serving bf16 takes the patch, answers the new value and reverts bit for bit."""

from __future__ import annotations

import shutil
from dataclasses import replace

import pytest
import torch

from factpatch.core import patchfile
from factpatch.core.checkpoint import Checkpoint
from factpatch.core.spec import Edit
from factpatch.plugin.checks import CheckError, check_patch

PROMPT = "The refund period of {} is"
HALF = {"bfloat16": torch.bfloat16, "float16": torch.float16}


@pytest.fixture(scope="module")
def edit(world) -> Edit:
    f = world.fact("Harbor Support", "refund period")
    new = next(c for c in world.relations[f.relation].candidates if c != f.object)
    return Edit(subject=f.subject, relation=f.relation, prompt=PROMPT, target_new=new, target_old=f.object)


@pytest.fixture(scope="module")
def made(fixture_dir, edit, tmp_path_factory):
    """dtype -> (folder, patch bytes): the fixture stored in that dtype and one ROME edit of it, made once."""
    from transformers import AutoModelForCausalLM

    from factpatch.editor.pipeline import EditOptions, evaluate_patch, heldout_texts, load, run_edit
    from factpatch.editor.rome import RomeParams

    cache: dict[str, tuple] = {}

    def get(dtype: str):
        if dtype not in cache:
            out = tmp_path_factory.mktemp(f"fixture-{dtype}")
            model = AutoModelForCausalLM.from_pretrained(str(fixture_dir), dtype=torch.float32)
            model.to(HALF[dtype]).save_pretrained(str(out), safe_serialization=True)
            for f in fixture_dir.iterdir():  # tokenizer, world, build report: everything but the weights
                if f.is_file() and not f.name.startswith(("model", "config")):
                    shutil.copy(f, out / f.name)
            mp = pytest.MonkeyPatch()
            mp.setenv("FACTPATCH_STATS_CACHE", str(tmp_path_factory.mktemp(f"stats-{dtype}")))
            try:
                loaded = load(out)
                # Half-precision arithmetic is slow on a CPU and these tests read the patch's base, dtype
                # and rounding: 300 covariance texts, and for fp16 (emulated here) 20 value steps, not 80.
                rome = RomeParams()
                if dtype == "float16":
                    rome = replace(rome, value=replace(rome.value, steps=20))
                result = run_edit(loaded, [edit], EditOptions(method="rome", n_samples=300, rome=rome))
                report = evaluate_patch(loaded, result.patch, [edit], heldout_texts(loaded, None))
            finally:
                mp.undo()
            result.patch.manifest["eval"] = report["metrics"]
            cache[dtype] = out, patchfile.to_bytes(result.patch)
        return cache[dtype]

    return get


@pytest.fixture(scope="module")
def bf16_dir(made):
    return made("bfloat16")[0]


@pytest.fixture(scope="module")
def patch_bytes(made):
    return made("bfloat16")[1]


@pytest.mark.parametrize("dtype", sorted(HALF))
def test_the_patch_names_the_stored_base_and_its_rounding(made, dtype, fixture_dir):
    half_dir, patch_bytes = made(dtype)
    patch = patchfile.from_bytes(patch_bytes)
    ckpt = Checkpoint(half_dir)
    assert all(ckpt[n].dtype == HALF[dtype] for n in patch.names)
    assert patch.manifest["base"]["fingerprint"] == ckpt.fingerprint(patch.names)
    assert patch.manifest["base"]["dtype"] == dtype
    assert patch.manifest["hparams"]["model_dtype"] == dtype  # held in its own dtype, not twice its bytes
    rounding = patch.manifest["rounding"]
    assert set(rounding) == set(patch.names) and all(0 < r < 0.5 for r in rounding.values()), rounding
    assert 0.0 <= patch.manifest["eval"]["efficacy"] <= 1.0  # evaluated (on the weights rounded below)
    # the shard's own check accepts it on the bf16 checkpoint, and refuses it on the float32 one
    check_patch(patch_bytes, ckpt, expected_digest=None, max_rank=64)
    with pytest.raises(CheckError) as ei:
        check_patch(patch_bytes, Checkpoint(fixture_dir), expected_digest=None, max_rank=64)
    assert ei.value.reason == "BASE_MISMATCH"


@pytest.mark.vllm
def test_a_bf16_shard_takes_the_patch_and_reverts_bit_for_bit(bf16_dir, patch_bytes, edit):
    from factpatch.harness.shard_process import ShardServer

    prompt = PROMPT.format(edit.subject)
    with ShardServer(bf16_dir, vllm_args=["--max-model-len", "128", "--dtype", "bfloat16", "--seed", "0"]) as shard:
        def answer():
            c = shard.complete(prompt, max_tokens=3)["choices"][0]
            return c["text"], c["logprobs"]["token_logprobs"]

        before = answer()
        assert before[0].strip().startswith(edit.target_old)
        r = shard.apply(patch_bytes)
        assert r.status_code == 200, r.text
        assert answer()[0].strip().startswith(edit.target_new)
        assert shard.revert().status_code == 200
        assert answer() == before  # text and log-probabilities: the base, bit for bit


@pytest.mark.parametrize("dtype", sorted(HALF))
def test_evaluation_measures_the_weights_a_half_precision_shard_holds(made, dtype):
    """eval applies the patch, then rounds the touched weights to the stored dtype: exactly bf16 (fp16)
    values, and equal to what base + ΔW written in that dtype gives."""
    from factpatch.editor.pipeline import load, round_to_stored_dtype
    from factpatch.editor.weights import apply_patch

    half_dir, patch_bytes = made(dtype)
    patch = patchfile.from_bytes(patch_bytes)
    loaded = load(half_dir, dtype="float32")  # held in float32, the evaluation rounds what it applied
    state = loaded.model.state_dict()
    apply_patch(loaded.adapter, patch)
    unrounded = {n: state[n].clone() for n in patch.names}
    round_to_stored_dtype(loaded, patch.names)
    ckpt = Checkpoint(half_dir)
    for n in patch.names:
        w = state[n]
        assert torch.equal(w, w.to(HALF[dtype]).float())  # representable in the stored dtype
        assert not torch.equal(w, unrounded[n])  # the rounding did something
        u, v = patch.factors[n]
        assert torch.equal(w, (ckpt[n].float() + u @ v.T).to(HALF[dtype]).float())
    # Held in its stored dtype (the default), the model takes the very same values from the patch.
    held = load(half_dir)
    assert all(p.dtype == HALF[dtype] for p in held.model.parameters())
    apply_patch(held.adapter, patch)
    for n in patch.names:
        assert torch.equal(held.model.state_dict()[n].float(), state[n])
