"""The `vllm.endpoint_plugins` entry point: sets up the agent and serves its routes on a port of their own.

vLLM loads it in the API server process only, and only when `VLLM_PLUGINS` names `factpatch_agent`.
Nothing is added to vLLM's OpenAI app: `/factpatch/*` answers 404 there, whoever asks.
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
        """Deliberately empty: the weight-writing routes never share the port every client can reach."""
        from factpatch.core import tracing

        from .agent_server import AgentServerConfig

        AgentServerConfig.from_env()  # a missing or broken agent port setting stops the server here, early
        tracing.setup(tracing.SHARD)  # OTEL_* settings; an unknown exporter stops the server here too

    async def init_state(self, engine_client: Any, state: Any, args: Namespace) -> None:
        from factpatch.core.checkpoint import Checkpoint
        from factpatch.core.signing import shard_policy

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
        trusted_keys, require_signatures = shard_policy()
        agent = AgentState(
            model=str(model),
            checkpoint=Checkpoint(args.model),
            swap=swap,
            tensor_parallel_size=int(getattr(args, "tensor_parallel_size", 1) or 1),
            trusted_keys=trusted_keys,
            require_signatures=require_signatures,
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
        from .agent_server import AgentServerConfig, build_app, serve

        config = AgentServerConfig.from_env()
        sock = config.bind()
        agent_app = build_app(agent)
        self._agent_task = asyncio.get_running_loop().create_task(serve(agent_app, config, sock))
        self._agent_task.add_done_callback(_agent_server_ended)
        log.info("factpatch agent listening on %s://%s:%d", config.scheme, config.host, config.port)
        from .metrics import register as register_metrics

        register_metrics(swap)
        # Whole-checkpoint fingerprint: hashed off the event loop so start-up is not held up.
        task = asyncio.get_running_loop().run_in_executor(None, agent.checkpoint.fingerprint)
        task.add_done_callback(lambda f: _set_fingerprint(agent, f))


def _agent_server_ended(task: "asyncio.Task[None]") -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("the factpatch agent server stopped: %r", task.exception())


def _set_fingerprint(agent: Any, fut: Any) -> None:
    try:
        agent.base_fingerprint = fut.result()
    except Exception as e:
        log.error("could not fingerprint the base checkpoint: %s", e)


def make_plugin() -> FactpatchEndpointPlugin:
    return FactpatchEndpointPlugin()
