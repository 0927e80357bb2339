"""Streaming clients through the gateway while a patch is rolled out, promoted and reverted again
and again: no request fails, and every response is exactly its tagged version's answer."""

from __future__ import annotations

import time

import pytest

from factpatch.harness.load_during_change import Churn, Clients, gateway_settled, judge

pytestmark = pytest.mark.vllm

# each a rollout, promotion and revert: the second finds the fleet as the first left it (bench.soak runs
# minutes of them)
CYCLES = 2
# Swaps that take a few seconds each can end two cycles before the clients have sent enough requests
# to judge: more cycles run, up to this many, until they have.
MIN_REQUESTS, MAX_CYCLES = 50, 8


def test_no_failed_or_mixed_responses_while_weights_change(stack, fix_patch, fact, world):
    prompts = list(fact.prompts) + [world.relations[f.relation].templates[f.train_templates[0]].format(f.subject)
                                    for f in world.facts[400:404]]
    digest = stack.cl.push(fix_patch).digest
    churn = Churn(stack.cl, digest, ["s0"], 50, gateway_settled(stack.srv.gateway.router))

    refs = churn.references(stack.url, stack.model, prompts, ["s0", "s1"])
    assert refs[digest][fact.prompts[0]] != refs["base"][fact.prompts[0]]  # the two versions answer differently

    with Clients(stack.url, stack.model, prompts, n=6) as clients:
        time.sleep(2)
        cycles = 0
        while cycles < CYCLES or (clients.finished < MIN_REQUESTS and cycles < MAX_CYCLES):
            churn.cycle(["s0", "s1"])
            cycles += 1
        time.sleep(1)
    v = judge(clients.outcomes, refs, churn.windows)
    assert v.sent >= MIN_REQUESTS and v.during_swaps >= 10, v
    assert v.failed == 0 and v.mismatched == 0 and v.untagged == 0, v.examples
    from tests.reliability.results import merge_section

    merge_section("load_during_change_test", {key: val for key, val in v.to_json().items() if key != "examples"} | {"cycles": cycles, "clients": 6})
    versions = {o.version for o in clients.outcomes}
    assert versions == {"base", digest}
