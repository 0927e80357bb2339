"""Checks a patch must pass before any rank is asked to write it.

Run in the API server against the checkpoint on disk: digest, format, factor sanity (finite, rank
limit), every named tensor exists with the right shape, and the base fingerprint over exactly the
tensors the patch touches equals this shard's. Ranks check again what only they can see (how the
tensor maps onto their layers) during staging, still before anything is written.
"""

from __future__ import annotations

from factpatch.core.checkpoint import Checkpoint
from factpatch.core.patchfile import Patch, PatchError, from_bytes, relative_change, sha256_bytes
from factpatch.core.reasons import Refusal


class CheckError(Exception):
    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


def check_patch(data: bytes, ckpt: Checkpoint, *, expected_digest: str | None, max_rank: int,
                max_change: float | None = None) -> tuple[Patch, str]:
    """The parsed patch and its digest, or CheckError naming the first failed check. `max_change`: the
    largest ‖ΔW‖/‖W‖ a tensor may get (None: no cap)."""
    digest = sha256_bytes(data)
    if expected_digest is not None and expected_digest.strip().lower() != digest:
        raise CheckError(Refusal.DIGEST_MISMATCH, f"body hashes to {digest}, the request named {expected_digest}")
    try:
        patch = from_bytes(data, max_rank=max_rank)
    except PatchError as e:
        raise CheckError(e.reason, str(e)) from None
    for name in patch.names:
        if name not in ckpt:
            raise CheckError(Refusal.UNKNOWN_TENSOR, f"{name!r} is not a tensor of this shard's checkpoint")
        u, v = patch.factors[name]
        want = ckpt.linear_shape(name)
        got = (int(u.shape[0]), int(v.shape[0]))
        if len(want) != 2 or tuple(want) != got:
            raise CheckError(Refusal.SHAPE_MISMATCH, f"{name}: ΔW would be {got[0]}x{got[1]}, the weight is {'x'.join(map(str, want))}")
    claimed = patch.manifest["base"]["fingerprint"]
    ours = ckpt.fingerprint(patch.names)
    if claimed != ours:
        raise CheckError(
            Refusal.BASE_MISMATCH,
            f"patch was made for base {claimed}; this shard's tensors {patch.names[:3]}... fingerprint to {ours}",
        )
    if max_change is not None:
        for name in patch.names:
            ratio = relative_change(ckpt.linear_weight(name), *patch.factors[name])
            if not ratio <= max_change:  # NaN counts as too large
                raise CheckError(Refusal.WEIGHT_CHANGE_TOO_LARGE,
                                 f"{name}: ‖ΔW‖/‖W‖ = {ratio:.3g}, over this shard's cap of {max_change:g} "
                                 f"(FACTPATCH_MAX_WEIGHT_CHANGE)")
    return patch, digest
