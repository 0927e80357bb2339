"""Text corpora for covariance statistics and locality checks: the fixture's own, or a folder of files."""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from pathlib import Path


class CorpusError(ValueError):
    """The corpus cannot be used (missing, empty); the message names the path."""


@dataclass(frozen=True)
class Corpus:
    name: str
    texts: list[str]

    def digest(self, n: int | None = None) -> str:
        """sha256 over the texts actually used, so a changed corpus never hits a stale cache."""
        h = hashlib.sha256()
        for t in self.texts[:n]:
            h.update(t.encode())
            h.update(b"\0")
        return h.hexdigest()

    def head(self, n: int | None) -> list[str]:
        return self.texts if n is None else self.texts[:n]


def fixture_corpus(world, split: str = "train") -> Corpus:
    """The fixture's text; sentences end in "." as the model was trained on them.

    "train" is what the model was trained on: general sentences and the fact sentences, shuffled
    together. The statistics need the fact sentences: C must know the directions subject keys take,
    or C⁻¹k points along what all subjects share and an edit spills onto their neighbours (measured:
    14 points of neighbour accuracy lost with general text alone). "heldout" is general text only.
    """
    if split != "train":
        return Corpus(f"fixture:{split}", [s + "." for s in world.corpus_heldout])
    texts = [s + "." for s in world.corpus_train]
    for f in world.facts:
        rel = world.relations[f.relation]
        texts += [f"{rel.templates[t].format(f.subject)} {f.object}." for t in f.train_templates]
    random.Random(0).shuffle(texts)
    return Corpus("fixture:train+facts", texts)


def folder_corpus(path: str | Path) -> Corpus:
    """Every non-empty paragraph of every *.txt file under `path`, in sorted file order."""
    root = Path(path)
    if not root.is_dir():
        raise CorpusError(f"corpus folder {root} does not exist or is not a folder")
    texts: list[str] = []
    for f in sorted(root.rglob("*.txt")):
        for para in f.read_text(errors="replace").split("\n\n"):
            para = " ".join(para.split())
            if para:
                texts.append(para)
    if not texts:
        raise CorpusError(f"corpus folder {root} is empty: it holds no non-empty *.txt file")
    return Corpus(f"folder:{root.resolve()}", texts)
