"""The `vllm.general_plugins` entry point, loaded by vLLM in every process (API server, engine core,
workers), possibly more than once.

The worker-side methods live in `factpatch.plugin.worker_ext` and reach the workers through
`--worker-extension-cls`. This hook only makes sure that module imports cleanly in each process
before the engine starts, so a broken install fails at start-up rather than at the first apply.
"""

from __future__ import annotations

import logging

log = logging.getLogger("factpatch.plugin")

NAME = "factpatch"
WORKER_EXTENSION = "factpatch.plugin.worker_ext.FactpatchWorkerExtension"


def register() -> None:
    from . import worker_ext  # noqa: F401  (import check; vLLM resolves the class by name)

    log.debug("factpatch general plugin loaded; worker extension %s", WORKER_EXTENSION)
