"""Editor tests run on the fixture model; statistics go to a per-session folder.

Only the statistics move: the fixture cache stays put, so a later test that builds or finds the
fixture finds the same one.
"""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="session")
def loaded(fixture_dir, tmp_path_factory):
    from factpatch.editor.pipeline import load

    torch.set_num_threads(2)
    mp = pytest.MonkeyPatch()
    mp.setenv("FACTPATCH_STATS_CACHE", str(tmp_path_factory.mktemp("stats")))
    yield load(fixture_dir)
    mp.undo()


def rome_layer(loaded) -> int:
    """The layer ROME edits on this model by default (src/factpatch/editor/model_defaults.py)."""
    from factpatch.editor.layers import default_layers

    return default_layers(loaded.adapter.n_layers, "rome", loaded.defaults)[0]


def memit_layers(loaded) -> list[int]:
    """The layers MEMIT edits on this model by default."""
    from factpatch.editor.layers import default_layers

    return default_layers(loaded.adapter.n_layers, "memit", loaded.defaults)


def mlp_layers(loaded) -> list[int]:
    """The layers an edit can write (the fixture's recipe keeps MLPs in its middle layers only)."""
    return loaded.adapter.editable_layers()


def fixture_edits(world, n: int, seed: int, keep: bool = False):
    """n random facts of distinct subjects, each given another candidate as its new object.

    With `keep`, each edit keeps its subject's other facts, asked in the second of the subject's trained
    phrasings: the evaluation checks them in the first, so what is held is not what is measured."""
    import random

    from factpatch.core.spec import Edit

    rng = random.Random(seed)
    facts = rng.sample(world.facts, len(world.facts))
    out, seen = [], set()
    for f in facts:
        if f.subject in seen:
            continue
        seen.add(f.subject)
        rel = world.relations[f.relation]
        new = rng.choice([c for c in rel.candidates if c != f.object])
        out.append(Edit(subject=f.subject, relation=f.relation, prompt=rel.templates[f.train_templates[0]],
                        target_new=new, target_old=f.object, provenance={"test": seed},
                        keep=world.keep_prompts(f.subject, f.relation) if keep else []))
        if len(out) == n:
            break
    return out
