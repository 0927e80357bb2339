"""The `vllm.endpoint_plugins` entry point: attaches the agent routes and sets up their state.

vLLM loads it in the API server process only, and only when `VLLM_PLUGINS` names `factpatch_agent`.
"""

from __future__ import annotations

import asyncio
import logging
import os
from argparse import Namespace
from typing import Any

log = logging.getLogger("factpatch.plugin.endpoint")

NAME = "factpatch_agent"


class FactpatchEndpointPlugin:
    name = NAME
    required_tasks = ("generate",)

    def attach_router(self, app: Any) -> None:
        from .agent import build_router

        app.include_router(build_router())

    async def init_state(self, engine_client: Any, state: Any, args: Namespace) -> None:
        from factpatch.core.checkpoint import Checkpoint

        from .agent import AgentState
        from .swap import SwapCoordinator

        if engine_client is None:  # the render-only server has no engine to patch
            return
        served = getattr(args, "served_model_name", None)
        model = (served[0] if isinstance(served, list) and served else served) or args.model
        swap = SwapCoordinator(
            engine_client,
            drain_timeout_s=float(os.environ.get("FACTPATCH_DRAIN_TIMEOUT_S", "30")),
            drain_policy=os.environ.get("FACTPATCH_DRAIN_POLICY", "abort"),
        )
        agent = AgentState(
            model=str(model),
            checkpoint=Checkpoint(args.model),
            swap=swap,
            tensor_parallel_size=int(getattr(args, "tensor_parallel_size", 1) or 1),
        )
        try:
            await swap.refresh()
        except Exception as e:  # most often: --worker-extension-cls was not given
            agent.wired = False
            agent.wiring_error = (
                "the workers do not answer factpatch RPCs; start vLLM with "
                "--worker-extension-cls factpatch.plugin.worker_ext.FactpatchWorkerExtension "
                f"({type(e).__name__}: {e})"
            )
            log.error(agent.wiring_error)
        state.factpatch = agent
        from .metrics import register as register_metrics

        register_metrics(swap)
        # Whole-checkpoint fingerprint: hashed off the event loop so start-up is not held up.
        task = asyncio.get_running_loop().run_in_executor(None, agent.checkpoint.fingerprint)
        task.add_done_callback(lambda f: _set_fingerprint(agent, f))


def _set_fingerprint(agent: Any, fut: Any) -> None:
    try:
        agent.base_fingerprint = fut.result()
    except Exception as e:
        log.error("could not fingerprint the base checkpoint: %s", e)


def make_plugin() -> FactpatchEndpointPlugin:
    return FactpatchEndpointPlugin()
