"""Why a shard refuses a patch: one set of reason codes for the patch reader, the plugin's checks, the
agent's answers and the control plane's handling of them, and the one table of their HTTP statuses.

A reason travels as its plain string (JSON bodies, gRPC ErrorInfo); `Refusal` is a `StrEnum`, so a
member compares equal to, and serializes as, that string.
"""

from __future__ import annotations

from enum import StrEnum


class Refusal(StrEnum):
    MALFORMED = "MALFORMED"  # the request or the patch bytes cannot be read
    UNKNOWN_FORMAT = "UNKNOWN_FORMAT"  # a patch format this build does not read
    DIGEST_MISMATCH = "DIGEST_MISMATCH"  # the bytes do not hash to the digest the request named
    BASE_MISMATCH = "BASE_MISMATCH"  # made for another base checkpoint
    SWAP_IN_PROGRESS = "SWAP_IN_PROGRESS"  # another weight change holds the shard
    UNKNOWN_TENSOR = "UNKNOWN_TENSOR"  # names a weight the model does not have (or that cannot be patched)
    SHAPE_MISMATCH = "SHAPE_MISMATCH"  # ΔW's shape is not the weight's
    NON_FINITE = "NON_FINITE"  # NaN or Inf in the factors
    RANK_TOO_LARGE = "RANK_TOO_LARGE"  # over the shard's rank limit
    UNSUPPORTED_TENSOR = "UNSUPPORTED_TENSOR"  # a layer kind a dense delta cannot go into (quantized, fused, …)
    ENGINE_UNSUPPORTED = "ENGINE_UNSUPPORTED"  # the engine's configuration cannot take in-place writes
    WEIGHT_CHANGE_TOO_LARGE = "WEIGHT_CHANGE_TOO_LARGE"  # ‖ΔW‖/‖W‖ of a tensor over the deployment's cap
    SIGNATURE_REQUIRED = "SIGNATURE_REQUIRED"  # unsigned, where the deployment requires signed patches
    SIGNATURE_UNTRUSTED = "SIGNATURE_UNTRUSTED"  # signed, but by a key not trusted there
    SIGNATURE_INVALID = "SIGNATURE_INVALID"  # the signature does not match the bytes (or is not one)


HTTP_STATUS: dict[Refusal, int] = {
    Refusal.MALFORMED: 400, Refusal.UNKNOWN_FORMAT: 400, Refusal.DIGEST_MISMATCH: 400,
    Refusal.BASE_MISMATCH: 409, Refusal.SWAP_IN_PROGRESS: 409,
    Refusal.UNKNOWN_TENSOR: 422, Refusal.SHAPE_MISMATCH: 422, Refusal.NON_FINITE: 422, Refusal.RANK_TOO_LARGE: 422,
    Refusal.UNSUPPORTED_TENSOR: 422, Refusal.ENGINE_UNSUPPORTED: 422, Refusal.WEIGHT_CHANGE_TOO_LARGE: 422,
    Refusal.SIGNATURE_REQUIRED: 403, Refusal.SIGNATURE_UNTRUSTED: 403, Refusal.SIGNATURE_INVALID: 403,
}

# The patch itself can never land on that shard: retrying will not help, roll back instead.
PERMANENT: frozenset[Refusal] = frozenset({
    Refusal.MALFORMED, Refusal.UNKNOWN_FORMAT, Refusal.DIGEST_MISMATCH, Refusal.BASE_MISMATCH,
    Refusal.UNKNOWN_TENSOR, Refusal.SHAPE_MISMATCH, Refusal.NON_FINITE, Refusal.RANK_TOO_LARGE,
    Refusal.WEIGHT_CHANGE_TOO_LARGE, Refusal.SIGNATURE_REQUIRED, Refusal.SIGNATURE_UNTRUSTED, Refusal.SIGNATURE_INVALID,
})


def http_status(reason: str | None, default: int = 500) -> int:
    """The HTTP status a shard answers a refusal with; `default` for a reason not in the table."""
    try:
        return HTTP_STATUS[Refusal(reason)]
    except ValueError:
        return default
