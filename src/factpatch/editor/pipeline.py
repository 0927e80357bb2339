"""An edit from start to finish: load, check every input, statistics, ROME or MEMIT, the patch.

All checks run before any statistics or optimisation, so bad input fails fast and writes nothing.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import Any, Callable

import torch

from factpatch.core.checkpoint import Checkpoint
from factpatch.core.patchfile import Patch, PatchError, new_manifest, tensor_fingerprint
from factpatch.core.patchfile import read as read_patch
from factpatch.core.spec import Edit

from . import layers as layer_choice
from . import model_defaults
from .adapters import Adapter, family_for
from .auto_layers import choose_layers
from .corpus import Corpus, CorpusError, fixture_corpus, folder_corpus
from .layer_cache import choice_key, choose_once
from .memit import MemitParams, apply_memit
from .memory import activation_bytes_per_token, budget_bytes, tokens_per_pass
from .model_identity import model_identity
from .prompts import TokenizationError, encode
from .rome import RomeParams, apply_rome, independent_edits
from .scoring import greedy_answers, score_targets
from .stats import second_moments
from .values import ESSENCE_TEMPLATE, ValueParams
from .weights import apply_patch, concat_ranks, restored_after

METHODS = ("rome", "memit")


class EditInputError(ValueError):
    """Input the editor refuses before computing anything; the message names the field."""


@dataclass
class Loaded:
    path: Path
    model: Any
    tok: Any
    adapter: Adapter
    world: Any | None
    defaults: Any | None = None  # model_defaults.ModelDefaults: the layers the model edits by default

    @property
    def name(self) -> str:
        return self.path.name

    @cached_property
    def checkpoint(self) -> Checkpoint:
        """The checkpoint as stored: the dtype and bytes a shard serving it fingerprints and writes."""
        return Checkpoint(self.path)

    @property
    def model_dtype(self) -> str:
        """The dtype the model is held in, so the one its forward and backward passes run in."""
        return str(self.adapter.weight(0).dtype).removeprefix("torch.")

    @cached_property
    def identity(self) -> str:
        """The key of the editor's caches: the whole model folder's fingerprint (hashed once per version of
        its files, model_identity) and the dtype the editor computes in (statistics differ with it)."""
        return "sha256:" + hashlib.sha256(f"{model_identity(self.path)}|{self.model_dtype}".encode()).hexdigest()

    def base_fingerprint(self, names) -> str:
        """The fingerprint a shard computes over these tensors: of the stored bytes, whatever dtype the
        editor computes in (a bf16 checkpoint loaded as float32 would hash differently)."""
        return self.checkpoint.fingerprint(sorted(names))

    def stored_dtype(self, name: str) -> torch.dtype:
        return self.checkpoint[name].dtype


def check_architecture(model_dir: str | Path):
    """Reads only config.json: an unsupported model is refused before its weights are loaded."""
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(str(model_dir))
    except (OSError, ValueError) as e:
        raise EditInputError(f"--model {model_dir}: not a Hugging Face model folder ({e})") from None
    try:
        family_for(config)
    except ValueError as e:
        raise EditInputError(f"--model {model_dir}: {e}") from None
    return config


LOAD_DTYPES = ("stored", "float32")


def load(model_dir: str | Path, threads: int | None = 2, hparams: str | Path | None = None,
         dtype: str = "stored") -> Loaded:
    """The model, in the dtype its checkpoint stores ("stored": a bf16 checkpoint takes its own bytes in
    memory, not twice them) or in float32. The edit's own arithmetic is float32 or wider either way
    (values, losses, covariance and solves); only the model's forward and backward passes run in `dtype`."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from factpatch.fixture.build import WORLD_FILE, load_world

    if threads:
        torch.set_num_threads(threads)
    config = check_architecture(model_dir)
    try:
        defaults = model_defaults.for_model(model_dir, config, hparams)
    except model_defaults.HparamsError as e:
        raise EditInputError(str(e)) from None
    if dtype not in LOAD_DTYPES:
        raise EditInputError(f"--load-dtype {dtype!r}: choose one of {', '.join(LOAD_DTYPES)}")
    try:
        torch_dtype = Checkpoint(model_dir).weights_dtype() if dtype == "stored" else torch.float32
    except (OSError, ValueError) as e:
        raise EditInputError(f"--model {model_dir}: {e}") from None
    if torch_dtype not in (torch.float32, torch.bfloat16, torch.float16):
        raise EditInputError(f"--model {model_dir}: stored in {torch_dtype}, which the editor cannot write; "
                             "use --load-dtype float32")
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch_dtype)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    tok = AutoTokenizer.from_pretrained(str(model_dir))
    world = load_world(model_dir) if (Path(model_dir) / WORLD_FILE).exists() else None
    return Loaded(Path(model_dir), model, tok, Adapter(model), world, defaults)


@dataclass
class EditOptions:
    method: str = "memit"
    layers: str | list[int] | None = None
    corpus_dir: str | None = None
    n_samples: int | None = None  # corpus texts for the covariance; None: all
    parent: str | None = None
    rome: RomeParams = field(default_factory=RomeParams)
    memit: MemitParams = field(default_factory=MemitParams)
    progress: bool = False
    seed: int = 0
    # Bytes of activations one pass of the edit may hold (the value optimisation's, and the passes that
    # read keys, residuals and references; editor/memory.py). "default": memory.default_budget, from the
    # model's size; "none": the value settings' row cap alone.
    memory_budget: int | str = "default"
    # layers="auto": read the choice stored for this model and these relations (layer_cache); False runs
    # the trace and the sweep again and stores the new choice over it.
    layer_cache: bool = True

    @property
    def layer_kind(self) -> str:
        """What decides the layers: the method, or "memit-joint" (one layer) for MEMIT through its update."""
        return "memit-joint" if self.method == "memit" and self.memit.through_update else self.method


def corpus_for(loaded: Loaded, corpus_dir: str | None) -> Corpus:
    if corpus_dir:
        return folder_corpus(corpus_dir)
    if loaded.world is not None:
        return fixture_corpus(loaded.world, "train")
    raise EditInputError("--corpus is required: this model has no world.json with a corpus of its own")


def validate(loaded: Loaded, edits, opts: EditOptions) -> tuple[list[int], Corpus, tuple[Patch, str] | None]:
    """Every check that can fail, in the order a user would fix them. Returns layers, corpus, parent."""
    if opts.method not in METHODS:
        raise EditInputError(f"--method {opts.method!r}: choose one of {', '.join(METHODS)}")
    late = _late_layer(opts, loaded.adapter, edits)
    if late is not None and not 0 <= late < loaded.adapter.n_layers:
        raise EditInputError(f"--fallback-layer {late}: out of range, the model has layers 0-{loaded.adapter.n_layers - 1}")
    try:
        choice = opts.layers if isinstance(opts.layers, list) else layer_choice.parse(opts.layers)
        if isinstance(choice, list):
            layer_choice.check(choice, loaded.adapter.n_layers, opts.layer_kind)
    except layer_choice.LayerError as e:
        raise EditInputError(str(e)) from None
    try:
        corpus = corpus_for(loaded, opts.corpus_dir)
    except CorpusError as e:
        raise EditInputError(str(e)) from None
    tok = loaded.tok
    for i, e in enumerate(edits):
        where = f"edit {i} ({e.subject!r}, {e.relation!r})"
        try:
            row = encode(tok, e.prompt, e.subject, target=e.target_new)
        except TokenizationError as err:
            raise EditInputError(f"{where}: {err}") from None
        unk = tok.unk_token_id
        if unk is not None and unk in row.ids[: row.target_start]:
            raise EditInputError(f"{where}: prompt {e.prompt!r} has words the tokenizer does not know")
        for kind, prompts in (("paraphrase", e.paraphrases), ("keep prompt", e.keep)):
            for p in prompts:
                try:
                    encode(tok, p, e.subject)
                except TokenizationError as err:
                    raise EditInputError(f"{where}: {kind} {p!r}: {err}") from None
    parent = None
    if opts.parent:
        try:
            parent = read_patch(opts.parent)
        except (OSError, PatchError) as err:
            raise EditInputError(f"--parent {opts.parent}: {err}") from None
        state = loaded.model.state_dict()
        missing = [n for n in parent[0].names if n not in state]
        if missing:
            raise EditInputError(f"--parent {opts.parent}: names {missing[0]!r}, which this model does not have")
        fp = loaded.base_fingerprint(parent[0].names)
        if fp != parent[0].manifest["base"]["fingerprint"]:
            raise EditInputError(f"--parent {opts.parent} was made for a different base model (fingerprint mismatch)")
    # The answers of the model this patch builds on (the base, or the base with the parent chain): an
    # edit to what it already says would silently do nothing.
    already = answers_already(loaded, edits, parent[0] if parent else None)
    if already.any():
        i = int(already.nonzero()[0, 0])
        e = edits[i]
        on = "the parent chain's" if parent else "the model's"
        raise EditInputError(
            f"edit {i} ({e.subject!r}, {e.relation!r}): target_new {e.target_new!r} is already {on} "
            f"answer to {e.text!r}; the edit would change nothing"
        )
    try:
        if choice == "auto":  # trace + validation sweep, once per model and relations; needs the corpus and options
            key = choice_key(opts.layer_kind, [e.relation for e in edits], opts.rome if opts.method == "rome" else opts.memit,
                             opts.n_samples, corpus.digest(len(corpus.head(opts.n_samples))))
            chosen = choose_once(loaded.identity, key, loaded.adapter.n_layers,
                                 lambda: choose_layers(loaded, edits, opts, corpus, _window_validator(loaded, opts)),
                                 use_cache=opts.layer_cache)
            chosen = layer_choice.check(chosen, loaded.adapter.n_layers, opts.layer_kind)
        else:
            chosen = layer_choice.resolve(choice, loaded.adapter.n_layers, opts.layer_kind, loaded.adapter, tok, edits,
                                          loaded.defaults)
    except layer_choice.LayerError as e:
        raise EditInputError(str(e)) from None
    empty = [l for l in chosen + ([late] if late is not None else []) if not loaded.adapter.weight(l).any()]
    if empty:
        raise EditInputError(f"layer {empty[0]}: its MLP output projection is all zeros, so it holds no fact to edit "
                             f"(its keys are zero); choose another layer")
    return chosen, corpus, parent


def _window_validator(loaded: Loaded, opts: EditOptions):
    """`--layers auto`'s sweep: edit a validation slice with candidate layers and measure the patch."""
    def validate(val_edits, layers: list[int]) -> dict[str, Any]:
        # The last-token fallback writes elsewhere: the window is judged on what it carries itself.
        sub = replace(opts, layers=layers, progress=False, parent=None,
                      rome=replace(opts.rome, last_token_fallback=False),
                      memit=replace(opts.memit, last_token_fallback=False, shared_subject_last_token=False))
        patch = run_edit(loaded, val_edits, sub).patch
        return evaluate_patch(loaded, patch, val_edits, [])["metrics"]
    return validate


@torch.no_grad()
def answers_already(loaded: Loaded, edits, parent: Patch | None) -> torch.Tensor:
    """Per edit, whether the model (with `parent` applied, when given) already answers its target."""
    with restored_after(loaded.adapter, parent.names if parent else []):
        if parent:
            apply_patch(loaded.adapter, parent)
        return score_targets(loaded.adapter, loaded.tok, [(e.prompt, e.subject, e.target_new) for e in edits]).greedy


def fill_old_targets(loaded: Loaded, edits) -> list[dict[str, Any]]:
    """Manifest entries; a missing target_old is filled with the base model's answer (for monitors)."""
    entries = [e.manifest_entry() for e in edits]
    need = [i for i, e in enumerate(edits) if e.target_old is None]
    if need:
        answers = greedy_answers(loaded.adapter, loaded.tok, [(edits[i].prompt, edits[i].subject) for i in need])
        for i, a in zip(need, answers):
            entries[i]["target_old"] = a or None
    return entries


@dataclass
class EditResult:
    patch: Patch
    layers: list[int]
    info: dict[str, Any]
    seconds: dict[str, float]


def _hparams(opts: EditOptions, layers: list[int], corpus: Corpus, n_texts: int) -> dict[str, Any]:
    method_hp = asdict(opts.rome if opts.method == "rome" else opts.memit)
    return {
        **method_hp,
        "covariance": {"corpus": corpus.name, "texts": n_texts, "digest": corpus.digest(n_texts)[:16]},
        "essence_template": ESSENCE_TEMPLATE,
        "seed": opts.seed,
    }


def settings_source(loaded: Loaded) -> model_defaults.ModelDefaults:
    """Where an edit's settings as data come from: the model's file (or the fixture's report), else the
    fallback file (a model no file matches; its layers still come by depth)."""
    return loaded.defaults if loaded.defaults is not None else model_defaults.fallback()


def with_model_defaults(loaded: Loaded, opts: EditOptions) -> EditOptions:
    """The settings the model's file names, over factpatch's own: MEMIT's λ, the value optimisation's
    settings (ROME's and plain MEMIT's; `--joint` optimises through its update, which no paper's
    settings are for), ROME's context prefixes, and whether ROME's last-token fallback is on where the
    caller left it open. The fixture's report names the last, and ROME's keep prompts' and prompt rows'
    weights (model_defaults._fixture_defaults). A setting the caller changed from factpatch's own
    stands: the file fills in only what the caller left at its default."""
    d = settings_source(loaded)
    rome, memit = opts.rome, opts.memit
    memit_own = MemitParams.joint() if memit.through_update else MemitParams()
    if d.rome.value is not None:
        rome = replace(rome, value=replace(rome.value, **_left_open(rome.value, RomeParams().value, d.rome.value.given())))
    if d.rome.n_prefixes is not None and rome.n_prefixes == RomeParams().n_prefixes:
        rome = replace(rome, n_prefixes=d.rome.n_prefixes)
    if rome.last_token_fallback is None:  # not chosen by the caller (--fallback-layer)
        rome = replace(rome, last_token_fallback=d.rome.last_token_fallback)
    if d.memit.mom2_weight is not None and memit.mom2_weight == memit_own.mom2_weight:
        memit = replace(memit, mom2_weight=d.memit.mom2_weight)
    if d.memit.value is not None and not memit.through_update:
        memit = replace(memit, value=replace(memit.value, **_left_open(memit.value, memit_own.value, d.memit.value.given())))
    return replace(opts, rome=rome, memit=memit)


def _left_open(chosen: ValueParams, own: ValueParams, named: dict[str, Any]) -> dict[str, Any]:
    """The fields of `named` (a model file's value settings) that `chosen` still holds at factpatch's
    own value (`own`): those a caller set otherwise are theirs to keep."""
    return {k: v for k, v in named.items() if getattr(chosen, k) == getattr(own, k)}


def _settings_record(loaded: Loaded, method: str) -> dict[str, Any] | None:
    """The manifest's note of which file the edit's settings came from (None: factpatch's own)."""
    d = settings_source(loaded)
    block = d.memit if method == "memit" else d.rome
    if block.value is None and not (method == "memit" and d.memit.mom2_weight is not None):
        return None
    return {"name": d.name, "origin": d.origin, "source": block.source,
            "fallback": loaded.defaults is None}


def with_memory_budget(opts: EditOptions, adapter: Adapter, layers: list[int]) -> EditOptions:
    """The value settings with `max_tokens_per_pass` from `opts.memory_budget`, measured at the lowest of
    `layers` (the most activations above it), for every value optimisation the edit may run (the passes
    reading keys and residuals take their bound from the same settings)."""
    budget = budget_bytes(opts.memory_budget, adapter.model)
    if budget is None:
        return opts
    tokens = tokens_per_pass(activation_bytes_per_token(adapter, min(layers)), budget)

    def cap(value: ValueParams | None) -> ValueParams | None:
        return None if value is None else replace(value, max_tokens_per_pass=tokens)

    rome = replace(opts.rome, value=cap(opts.rome.value), fallback_value=cap(opts.rome.fallback_value))
    memit = replace(opts.memit, value=cap(opts.memit.value), retry_value=cap(opts.memit.retry_value))
    return replace(opts, rome=rome, memit=memit)


def run_edit(loaded: Loaded, edits, opts: EditOptions, on_progress: Callable[[str, int, int], None] | None = None) -> EditResult:
    """Validate, compute and return the patch. The loaded model is left as the base on return."""
    opts = with_model_defaults(loaded, opts)

    def compute(adapter, tok, layers, covs, prefixes, opts):
        if opts.method == "rome":
            cb = (lambda i, rec: on_progress("edits", i + 1, len(edits))) if on_progress else None
            written, per_edit = apply_rome(adapter, tok, edits, layers[0], covs[layers[0]], prefixes, opts.rome, on_edit=cb,
                                           late=_late(opts, adapter, covs, edits))
            return [(written, {"per_edit": per_edit})]
        return [apply_memit(adapter, tok, edits, layers, covs, prefixes, opts.memit, on_progress=on_progress,
                            protect=parent_edits(opts))]

    return _run(loaded, edits, opts, compute, lambda i: range(len(edits)))[0]


def parent_edits(opts: EditOptions) -> list[Edit]:
    """The edits of the patch chain this one extends (the parent's manifest lists every generation's)."""
    if not opts.parent:
        return []
    fields = set(Edit.model_fields)
    return [Edit(**{k: v for k, v in e.items() if k in fields}) for e in read_patch(opts.parent)[0].manifest.get("edits", [])]


def run_single_edits(loaded: Loaded, edits, opts: EditOptions,
                     on_progress: Callable[[str, int, int], None] | None = None) -> list[EditResult]:
    """ROME: one patch per edit, each edit made alone from the base (or the parent), all optimised in
    one batch. The edits are validated together, as one spec."""
    if opts.method != "rome":
        raise EditInputError(f"--method {opts.method!r}: single edits from the base are a ROME run")
    opts = with_model_defaults(loaded, opts)

    def compute(adapter, tok, layers, covs, prefixes, opts):
        factors, info = independent_edits(adapter, tok, edits, layers[0], covs[layers[0]], prefixes, opts.rome,
                                          on_progress=on_progress, late=_late(opts, adapter, covs, edits))
        return [(f, {"per_edit": [rec]}) for f, rec in zip(factors, info)]

    return _run(loaded, edits, opts, compute, lambda i: [i])


def _late_layer(opts: EditOptions, adapter: Adapter, edits) -> int | None:
    """The layer the method's last-token pass writes for these edits, if it can happen."""
    return (opts.rome if opts.method == "rome" else opts.memit).late_layer(adapter.n_layers, adapter.editable_layers(), edits)


def _late(opts: EditOptions, adapter: Adapter, covs: dict[int, torch.Tensor], edits) -> tuple[int, torch.Tensor] | None:
    """ROME's last-token fallback: its layer and that layer's covariance (computed with the others)."""
    late = _late_layer(opts, adapter, edits)
    return None if late is None else (late, covs[late])


def _run(loaded: Loaded, edits, opts: EditOptions, compute, edits_of) -> list[EditResult]:
    """The steps every edit run shares: checks, statistics, the base's fingerprint, `compute` on the live
    model (which is put back to the base bit for bit), then one patch per result `compute` returns,
    holding the edits at the indices `edits_of(i)`."""
    from .prompts import context_prefixes

    layers, corpus, parent = validate(loaded, edits, opts)
    adapter, tok = loaded.adapter, loaded.tok
    t0 = time.perf_counter()
    entries = fill_old_targets(loaded, edits)
    # Every layer an edit may write: the chosen ones and the last-token fallback's. Their
    # statistics come from the base model, before anything is edited.
    late = _late_layer(opts, adapter, edits)
    writable = sorted(set(layers) | ({late} if late is not None else set()))
    covs = second_moments(adapter, tok, writable, corpus, opts.n_samples, progress=opts.progress, fingerprint=loaded.identity)
    t_stats = time.perf_counter() - t0
    opts = with_memory_budget(opts, adapter, writable)

    touched = sorted({adapter.param_name(l) for l in writable} | set(parent[0].names if parent else []))

    t1 = time.perf_counter()
    with restored_after(adapter, touched):  # back to the base, bit for bit
        if parent:
            apply_patch(adapter, parent[0])
        hp = opts.rome if opts.method == "rome" else opts.memit
        prefixes = context_prefixes(adapter.model, tok, hp.n_prefixes, seed=opts.seed)
        results = compute(adapter, tok, layers, covs, prefixes, opts)
    t_edit = time.perf_counter() - t1

    defaults = loaded.defaults
    hparams = {**_hparams(opts, layers, corpus, len(corpus.head(opts.n_samples))), "batch_layers": list(layers),
               "model_dtype": loaded.model_dtype,
               "model_defaults": None if defaults is None else {
                   "name": defaults.name, "origin": defaults.origin,
                   "source": defaults.memit.source if opts.method == "memit" else defaults.rome.source},
               "settings_from": _settings_record(loaded, opts.method),
               **({"layer_choice": layers.report} if hasattr(layers, "report") else {})}
    fingerprints: dict[tuple[str, ...], str] = {}  # single edits write one or two sets of tensors between them
    out = []
    for i, (new, info) in enumerate(results):
        factors: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        if parent:
            factors.update(parent[0].factors)
        for l, (u, v) in new.items():
            name = adapter.param_name(l)
            if name in factors:  # a follow-up batch carries its parent's factors: ranks concatenate
                u, v = concat_ranks(factors[name], (u, v))
            factors[name] = (u.contiguous(), v.contiguous())
        # The base's fingerprint over exactly the tensors this patch writes (the saved copies are the base's).
        names = tuple(sorted(factors))
        if names not in fingerprints:
            fingerprints[names] = loaded.base_fingerprint(names)
        written = sorted(set(new) | set(parent[0].manifest.get("layers", []) if parent else []))
        manifest = new_manifest(
            model_name=loaded.name,
            fingerprint=fingerprints[names],
            method=opts.method,
            layers=written,
            hparams=hparams,
            edits=(parent[0].manifest.get("edits", []) if parent else [])
            + [{**entries[j], "written": w} for j, w in zip(edits_of(i), _written_with(opts, layers, info, [edits[j] for j in edits_of(i)]))],
            parent=parent[1] if parent else None,
        )
        manifest["base"]["dtype"] = str(loaded.stored_dtype(names[0])).removeprefix("torch.")
        manifest["rounding"] = serving_rounding(loaded, factors)
        out.append(EditResult(Patch(factors, manifest), sorted(new), info, {"stats": t_stats, "edit": t_edit}))
    return out


def _written_with(opts: EditOptions, layers: list[int], info: dict[str, Any], edits) -> list[dict[str, Any]]:
    """Per edit, how it was written: method, layer(s) and where its key was read ("subject": the subject's
    last token; "last": the prompt's last token, the last-token fallback). A MEMIT edit the fallback wrote
    again carries both writes."""
    if opts.method == "rome":
        return [{"method": "rome", "layers": [r["layer"]], "key_at": r["key_at"]} for r in info["per_edit"]]
    method = "memit-joint" if opts.memit.through_update else "memit"
    again = {(w["subject"], w["relation"]): w["layer"] for w in (info.get("last_token_fallback") or {}).get("written", [])}
    out = []
    for e in edits:
        w: dict[str, Any] = {"method": method, "layers": sorted(layers), "key_at": "subject"}
        if (e.subject, e.relation) in again:
            w["fallback"] = {"method": "rome", "layers": [again[(e.subject, e.relation)]], "key_at": "last"}
        out.append(w)
    return out


def manifest_json(patch: Patch) -> str:
    return json.dumps(patch.manifest, indent=2, sort_keys=True)


def heldout_texts(loaded: Loaded, heldout_dir: str | None) -> list[str]:
    """General text the edit should not disturb: a folder the user gives, or the fixture's held-out corpus."""
    if heldout_dir:
        try:
            return folder_corpus(heldout_dir).texts
        except CorpusError as e:
            raise EditInputError(str(e)) from None
    if loaded.world is not None:
        return fixture_corpus(loaded.world, "heldout").texts
    return []


@torch.no_grad()
def round_to_stored_dtype(loaded: Loaded, names) -> None:
    """The live (float32) weights as a shard holds them after the patch: rounded to the stored dtype."""
    state = loaded.model.state_dict()
    for n in names:
        dtype = loaded.stored_dtype(n)
        if dtype != state[n].dtype:
            state[n].copy_(state[n].to(dtype).to(state[n].dtype))


@torch.no_grad()
def serving_rounding(loaded: Loaded, factors) -> dict[str, float]:
    """Per tensor, how much of ΔW the stored dtype loses: ‖round(W + ΔW) − W − ΔW‖ / ‖ΔW‖ (0 for float32)."""
    out = {}
    for name, (u, v) in factors.items():
        stored = loaded.checkpoint.linear_weight(name)
        if stored.dtype == torch.float32:
            out[name] = 0.0
            continue
        delta = u.float() @ v.float().T
        written = (stored.float() + delta).to(stored.dtype).float() - stored.float()
        out[name] = round(float((written - delta).norm() / delta.norm().clamp_min(1e-30)), 6)
    return out


def evaluate_patch(
    loaded: Loaded, patch: Patch, edits, heldout: list[str], gates=None, parts: dict[str, list[int]] | None = None,
    n_regression: int = 0,
) -> dict[str, Any]:
    """Measure the base, apply the patch exactly as a reader would, measure again, restore the base.

    `parts` names groups of edits (by index) to report on their own as well, under "parts" (no locality:
    the held-out text is not any one group's). `n_regression`: that many other facts of the fixture's
    world as a regression set (evaluate.py)."""
    from .evaluate import Gates, apply_gates, build_probes, measure, measure_baseline

    adapter, tok = loaded.adapter, loaded.tok
    probes = build_probes(adapter, tok, edits, loaded.world, n_regression=n_regression)
    base = measure_baseline(adapter, tok, probes, edits, heldout)
    with restored_after(adapter, patch.names):
        apply_patch(adapter, patch)
        round_to_stored_dtype(loaded, patch.names)  # what a shard serving the checkpoint's dtype computes with
        metrics = measure(adapter, tok, base, edits)
        by_part = {name: measure(adapter, tok, base, edits, only=set(idx), locality=False) for name, idx in (parts or {}).items()}
    passed, gate_rows = apply_gates(metrics, gates or Gates())
    out = {"metrics": metrics, "gates": gate_rows, "passed": passed}
    if parts:
        out["parts"] = by_part
    return out


def check_fingerprint(loaded: Loaded, patch: Patch) -> None:
    state = loaded.model.state_dict()
    missing = [n for n in patch.names if n not in state]
    if missing:
        raise EditInputError(f"the patch names {missing[0]!r}, which {loaded.path} does not have")
    fp = tensor_fingerprint({n: state[n] for n in patch.names})
    if fp != patch.manifest.get("base", {}).get("fingerprint"):
        raise EditInputError(f"the patch was made for a different base than {loaded.path} (fingerprint mismatch)")


def evaluate_each(loaded: Loaded, patches: list[Patch], edits, heldout: list[str], gates=None) -> dict[str, Any]:
    """Single edits, each applied alone to the base: per-edit metrics and their means over edits."""
    from .evaluate import Gates, apply_gates, build_probes, measure, measure_baseline

    adapter, tok = loaded.adapter, loaded.tok
    probes = build_probes(adapter, tok, edits, loaded.world)
    base = measure_baseline(adapter, tok, probes, edits, heldout)
    per_edit = []
    for i, patch in enumerate(patches):
        with restored_after(adapter, patch.names):
            apply_patch(adapter, patch)
            per_edit.append(measure(adapter, tok, base, edits, only={i}))
    metrics: dict[str, Any] = {"edits": len(per_edit)}
    for key in ("efficacy", "efficacy_greedy", "efficacy_prob", "generalization", "neighbours_unchanged",
                "old_value_neighbours_unchanged", "new_value_neighbours_unchanged",
                "specificity_drop", "ppl_drift", "kl_unrelated"):
        vals = [m[key] for m in per_edit if m.get(key) is not None]
        metrics[key] = sum(vals) / len(vals) if vals else None
    metrics["ppl_drift_max"] = max((m["ppl_drift"] for m in per_edit if m.get("ppl_drift") is not None), default=None)
    metrics["edits_not_taken"] = [x for m in per_edit for x in m["edits_not_taken"]]
    passed, gate_rows = apply_gates(metrics, gates or Gates())
    return {"metrics": metrics, "gates": gate_rows, "passed": passed, "per_edit": per_edit}
