"""Named crash points for fault tests, in the spirit of etcd's failpoints.

    failpoints.hit("store.put.after_rename")   # dies here when the name is armed

`FACTPATCH_FAILPOINTS=name[,name…]` in a process's environment arms those names: reaching one, the
process sends itself SIGKILL, exactly what `kill -9` at that instant would do (no handler, no flush,
no cleanup runs). Unarmed, a check is a set lookup. The names a build has are listed in `NAMES`, so a
test can sweep them all and a misspelt one is refused at start.
"""

from __future__ import annotations

import os
import signal

ENV = "FACTPATCH_FAILPOINTS"

NAMES = (
    # storing a patch: the blob's atomic write, then its record
    "store.put.after_temp_write",  # bytes written to the dot-named temporary file, not yet fsynced
    "store.put.after_file_fsync",  # temporary file durable, not yet renamed
    "store.put.after_rename",  # blob under its name, directory not yet fsynced
    "store.put.after_dir_fsync",  # blob durable, no patch record yet
    "import.after_record",  # record committed, the caller not yet answered
    # applying a decision on a shard
    "reconciler.after_agent_call",  # the shard switched, its audit row not yet finished
    # the reconciler's rollout decisions (state and audit record commit in one transaction)
    "rollout.after_transition",  # a transition committed, nothing acted on it yet
)


def _armed() -> frozenset[str]:
    names = frozenset(n.strip() for n in os.environ.get(ENV, "").split(",") if n.strip())
    unknown = names - set(NAMES)
    if unknown:
        raise ValueError(f"${ENV} names unknown failpoints {sorted(unknown)}; known: {', '.join(NAMES)}")
    return names


ARMED = _armed()


def hit(name: str) -> None:
    if name in ARMED:
        os.kill(os.getpid(), signal.SIGKILL)
