"""One fingerprint for a whole model folder, hashed once per version of its files.

The editor's caches (covariance statistics, `--layers auto`'s choice) are keyed by the model they were
measured on. Hashing every stored byte costs as long as reading the model again (tens of seconds for an
8B checkpoint), on every `factpatch edit` call. So the fingerprint is remembered in
`cache_root()/identity/`, beside the file states it was computed from (path, size, modification time
and inode of each weight file and of config.json); any change to one of them, even a rewrite to the
same size, hashes the model again.

    >>> model_identity("/models/llama-3-8b")   # the first call reads every weight
    'sha256:3f1c…'
    >>> model_identity("/models/llama-3-8b")   # later calls stat the files
    'sha256:3f1c…'
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from factpatch.core.atomic import atomic_path
from factpatch.core.checkpoint import Checkpoint
from factpatch.fixture.build import cache_root

IDENTITY_VERSION = 1  # bump when what goes into the fingerprint changes


def identity_root() -> Path:
    return cache_root() / "identity"


def _file_states(ckpt: Checkpoint) -> dict[str, list[int]]:
    config = ckpt.dir / "config.json"
    files = ckpt.weight_files() + ([config] if config.exists() else [])
    states = {}
    for f in files:
        st = os.stat(f)
        states[f.name] = [st.st_size, st.st_mtime_ns, st.st_ino]
    return states


def _fingerprint(ckpt: Checkpoint) -> str:
    """The stored weights' fingerprint (what a shard computes over the same tensors) and the config."""
    h = hashlib.sha256(ckpt.fingerprint().encode())
    cfg = ckpt.dir / "config.json"
    if cfg.exists():
        h.update(cfg.read_bytes())
    return "sha256:" + h.hexdigest()


def model_identity(model_dir: str | os.PathLike) -> str:
    """The model folder's fingerprint: remembered while its files stay as they were, else hashed again."""
    ckpt = Checkpoint(model_dir)
    folder = ckpt.dir.resolve()
    memo = identity_root() / f"{hashlib.sha256(str(folder).encode()).hexdigest()[:24]}.json"
    states = _file_states(ckpt)
    try:
        known = json.loads(memo.read_text())
        if known.get("version") == IDENTITY_VERSION and known.get("folder") == str(folder) and known.get("files") == states:
            return known["fingerprint"]
    except (OSError, ValueError, KeyError, TypeError):
        pass  # no memo, or one that cannot be read: hash again and write it afresh
    fingerprint = _fingerprint(ckpt)
    if _file_states(ckpt) == states:  # a file rewritten while it was read is hashed again next time
        try:
            with atomic_path(memo, durable=False) as tmp:  # a cache: rebuilt if lost
                tmp.write_text(json.dumps({"version": IDENTITY_VERSION, "folder": str(folder), "files": states,
                                           "fingerprint": fingerprint}))
        except OSError:
            pass  # a cache that cannot be written costs time, not correctness
    return fingerprint
