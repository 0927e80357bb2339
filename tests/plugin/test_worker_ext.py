"""The worker extension on real vLLM linear layers in this process (CPU backend, tp = 1): staging
writes nothing, commits are all-or-none per rank, X → Y is base + ΔY, revert and rollback are exact."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import save_file

from factpatch.core import patchfile
from factpatch.harness.shard_process import free_port

pytest.importorskip("vllm")

DOWN = "model.layers.0.mlp.down_proj.weight"
GATE = "model.layers.0.mlp.gate_proj.weight"
UP = "model.layers.0.mlp.up_proj.weight"


@pytest.fixture(scope="module")
def dist():
    from vllm.config import VllmConfig, set_current_vllm_config
    from vllm.distributed import (
        destroy_distributed_environment,
        destroy_model_parallel,
        init_distributed_environment,
        initialize_model_parallel,
    )

    cfg = VllmConfig()
    with set_current_vllm_config(cfg):
        init_distributed_environment(world_size=1, rank=0, local_rank=0, backend="gloo",
                                     distributed_init_method=f"tcp://127.0.0.1:{free_port()}")
        initialize_model_parallel(1, 1)
        yield cfg
        destroy_model_parallel()
        destroy_distributed_environment()


@pytest.fixture()
def worker(dist, tmp_path):
    from vllm.config import CompilationMode, set_current_vllm_config
    from vllm.model_executor.layers.linear import MergedColumnParallelLinear, RowParallelLinear

    from factpatch.plugin.worker_ext import FactpatchWorkerExtension

    g = torch.Generator().manual_seed(0)
    ckpt = {DOWN: torch.randn(32, 64, generator=g), GATE: torch.randn(64, 32, generator=g), UP: torch.randn(64, 32, generator=g)}
    save_file(ckpt, str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))

    with set_current_vllm_config(dist):
        mlp = torch.nn.Module()
        mlp.down_proj = RowParallelLinear(64, 32, bias=False, return_bias=False)
        mlp.gate_up_proj = MergedColumnParallelLinear(32, [64, 64], bias=False, return_bias=False)
    mlp.down_proj.weight.data.copy_(ckpt[DOWN])
    mlp.gate_up_proj.weight.data.copy_(torch.cat([ckpt[GATE], ckpt[UP]]))
    for layer in (mlp.down_proj, mlp.gate_up_proj):
        layer.quant_method.process_weights_after_loading(layer)  # packs, drops the dense weight
    assert mlp.down_proj.weight.numel() == 0
    model = torch.nn.Module()
    model.model = torch.nn.Module()
    model.model.layers = torch.nn.ModuleList([torch.nn.Module()])
    model.model.layers[0].mlp = mlp
    model.packed_modules_mapping = {"gate_up_proj": ["gate_proj", "up_proj"]}

    class Worker(FactpatchWorkerExtension):
        pass

    w = Worker()
    w.rank = 0
    w.model_runner = SimpleNamespace(get_model=lambda: model)
    w.vllm_config = SimpleNamespace(model_config=SimpleNamespace(model=str(tmp_path)),
                                    compilation_config=SimpleNamespace(mode=CompilationMode.NONE))
    w.ckpt, w.mlp, w.dir = ckpt, mlp, tmp_path
    return w


def make(w, names, seed, rank=2, scale=0.3):
    g = torch.Generator().manual_seed(seed)
    factors = {}
    for n in names:
        out, inp = w.ckpt[n].shape
        factors[n] = (torch.randn(out, rank, generator=g) * scale, torch.randn(inp, rank, generator=g))
    fp = patchfile.tensor_fingerprint({n: w.ckpt[n] for n in names})
    m = patchfile.new_manifest(model_name="t", fingerprint=fp, method="random", layers=[0], hparams={}, edits=[])
    data = patchfile.to_bytes(patchfile.Patch(factors, m))
    return data, patchfile.sha256_bytes(data), factors


X_IN = torch.randn(3, 64, generator=torch.Generator().manual_seed(1))
H_IN = torch.randn(3, 32, generator=torch.Generator().manual_seed(2))


def outputs(w):
    return w.mlp.down_proj(X_IN).clone(), w.mlp.gate_up_proj(H_IN).clone()


def expected(w, factors):
    ws = {n: t.clone() for n, t in w.ckpt.items()}
    for n, (u, v) in factors.items():
        ws[n] = (ws[n].float() + u @ v.T).to(ws[n].dtype)
    return torch.nn.functional.linear(X_IN, ws[DOWN]), torch.nn.functional.linear(H_IN, torch.cat([ws[GATE], ws[UP]]))


def apply(w, data, digest):
    assert w.factpatch_stage(data, digest)["ok"]
    res = w.factpatch_commit(digest)
    assert res["ok"], res
    return res


def same(a, b):
    return all(torch.equal(x, y) for x, y in zip(a, b))


def test_apply_writes_base_plus_delta_and_revert_is_exact(worker):
    base = outputs(worker)
    data, digest, factors = make(worker, [DOWN, GATE], seed=3)
    res = apply(worker, data, digest)
    assert res["patched_modules"] == ["model.layers.0.mlp.down_proj", "model.layers.0.mlp.gate_up_proj"]
    assert res["bytes_held"] == (32 * 64 + 128 * 32) * 4
    for got, want in zip(outputs(worker), expected(worker, factors)):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert not same(outputs(worker), base)
    apply(worker, None, None)
    assert same(outputs(worker), base)
    assert worker.factpatch_state()["bytes_held"] == 0


def test_x_to_y_equals_base_plus_y(worker):
    y, dy, _ = make(worker, [UP], seed=5)
    apply(worker, y, dy)
    base_plus_y = outputs(worker)
    apply(worker, None, None)
    x, dx, _ = make(worker, [DOWN, GATE], seed=4)
    apply(worker, x, dx)
    res = apply(worker, y, dy)
    assert res["patched_modules"] == ["model.layers.0.mlp.gate_up_proj"]  # down_proj went back to base
    assert same(outputs(worker), base_plus_y)


def test_staging_writes_nothing_and_reports_reasons(worker):
    base = outputs(worker)
    data, digest, _ = make(worker, [DOWN], seed=6)
    assert worker.factpatch_stage(data, digest)["ok"]
    assert same(outputs(worker), base)  # staged, not written
    worker.factpatch_discard()
    assert worker.factpatch_commit(digest)["reason"] == "NOT_STAGED"
    bad_u = torch.randn(31, 2)
    m = patchfile.new_manifest(model_name="t", fingerprint="sha256:x", method="r", layers=[0], hparams={}, edits=[])
    for factors, reason in (
        ({DOWN: (bad_u, torch.randn(64, 2))}, "SHAPE_MISMATCH"),
        ({"model.layers.0.mlp.nothing.weight": (torch.randn(32, 2), torch.randn(64, 2))}, "UNKNOWN_TENSOR"),
        # finite factors whose product is not: 1e20 · 1e20 overflows the serving dtype
        ({DOWN: (torch.full((32, 1), 1e20), torch.full((64, 1), 1e20))}, "NON_FINITE"),
    ):
        res = worker.factpatch_stage(patchfile.to_bytes(patchfile.Patch(factors, m)), "sha256:y")
        assert res == {**res, "ok": False, "reason": reason}
    assert same(outputs(worker), base)


def test_a_failed_write_restores_the_rank_exactly(worker, monkeypatch):
    x, dx, _ = make(worker, [GATE], seed=7)
    apply(worker, x, dx)
    on_x = outputs(worker)
    y, dy, _ = make(worker, [DOWN, UP], seed=8)
    st = worker._fp()
    real = st.writer.write
    calls = []

    def flaky(layer, weight):
        calls.append(layer)
        if len(calls) == 2:
            raise RuntimeError("injected")
        real(layer, weight)

    monkeypatch.setattr(st.writer, "write", flaky)
    assert worker.factpatch_stage(y, dy)["ok"]
    res = worker.factpatch_commit(dy)
    assert res["ok"] is False and res["reason"] == "WRITE_FAILED" and "restored=True" in res["message"]
    monkeypatch.setattr(st.writer, "write", real)
    assert worker.factpatch_state()["active_version"] == dx
    assert same(outputs(worker), on_x)


def test_rollback_returns_to_the_previous_version(worker):
    x, dx, _ = make(worker, [DOWN], seed=9)
    apply(worker, x, dx)
    on_x = outputs(worker)
    y, dy, _ = make(worker, [GATE, UP], seed=10)
    apply(worker, y, dy)
    res = worker.factpatch_rollback()
    assert res["ok"] and res["active_version"] == dx
    assert same(outputs(worker), on_x)
