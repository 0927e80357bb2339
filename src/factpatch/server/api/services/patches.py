"""PatchService: import, inspect, delete and download patches; CreatePatch through the editor."""

from __future__ import annotations

import errno
import hashlib

import grpc
from google.rpc import code_pb2, status_pb2

from factpatch.core import failpoints, patchfile
from factpatch.core.reasons import Refusal
from factpatch.core.signing import SignatureError, check_policy
from factpatch.server.api import convert
from factpatch.server.api.context import ControlPlane
from factpatch.server.api.errors import ApiError, invalid, not_found, precondition
from factpatch.server.api.idempotency import request_hash
from factpatch.server.api.interceptor import call_principal, current_call
from factpatch.server.api.paging import offset_page, page_offset, page_size
from factpatch.server.state.store import StoreCorrupt, valid_digest
from factpatch.v1 import common_pb2, patch_pb2, patch_pb2_grpc

BLOB_CHUNK = 1 << 20
IMPORT_METHOD = "/factpatch.v1.PatchService/ImportPatch"


def check_digest(digest: str, field: str = "digest") -> str:
    if not valid_digest(digest):
        raise invalid("BAD_DIGEST", f"{field} must be 'sha256:' and 64 lowercase hex digits, got {digest!r}", field=field)
    return digest


class PatchService(patch_pb2_grpc.PatchServiceServicer):
    def __init__(self, cp: ControlPlane):
        self.cp = cp

    def _patch(self, digest: str) -> common_pb2.Patch:
        row = self.cp.db.patch(check_digest(digest))
        if row is None:
            raise not_found("PATCH_NOT_FOUND", f"no patch {digest} in the store", digest=digest)
        users = [u.split(":", 1)[1] for u in self.cp.db.patch_users(digest) if u.startswith("shard:")]
        return convert.patch(row, users)

    def _check_weight_change(self, patch) -> None:
        """The deployment's cap on ‖ΔW‖/‖W‖, before anything is stored, where a local base allows it."""
        cap = self.cp.max_weight_change
        if cap is None:
            return
        ckpt = self.cp.basecheck.for_patch(patch.manifest["base"]["fingerprint"], tuple(patch.names))
        if ckpt is None:
            return  # no local copy of its base: each shard checks its own cap on apply
        for name in patch.names:
            ratio = patchfile.relative_change(ckpt.linear_weight(name), *patch.factors[name])
            if not ratio <= cap:  # NaN counts as too large
                raise invalid(Refusal.WEIGHT_CHANGE_TOO_LARGE, f"{name}: ‖ΔW‖/‖W‖ = {ratio:.3g}, over the cap of {cap:g} "
                              "(--max-weight-change)", field="chunk")

    def _check_signature(self, data: bytes, signature: bytes | None) -> str:
        """The verified signer's key id ("" for none); refuses what the deployment's policy refuses."""
        try:
            return check_policy(self.cp.trusted_keys, self.cp.require_signatures, data, signature) or ""
        except SignatureError as e:
            code = grpc.StatusCode.FAILED_PRECONDITION if e.reason == Refusal.SIGNATURE_REQUIRED else grpc.StatusCode.PERMISSION_DENIED
            raise ApiError(code, e.reason, str(e), field="header.signature") from None

    def store_patch(self, data: bytes, principal: str, signature: bytes | None = None) -> str:
        """Validates and stores patch bytes; returns the digest (idempotent by content)."""
        try:
            patch = patchfile.from_bytes(data)
        except patchfile.PatchError as e:
            raise invalid("MALFORMED_PATCH", str(e), field="chunk") from None
        self._check_weight_change(patch)
        signed_by = self._check_signature(data, signature)
        with self.cp.mutation_lock:
            try:
                digest = self.cp.store.put(data)
            except OSError as e:
                if e.errno in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT):
                    # The store wrote to a temporary file and removed it: nothing half-stored remains.
                    raise ApiError(grpc.StatusCode.RESOURCE_EXHAUSTED, "STORE_FULL",
                                   f"the patch store has no room for {len(data)} bytes ({e.strerror})") from None
                raise
            self.cp.db.add_patch(digest, len(data), patch.manifest, patch.names, principal,
                                 signature=signature or None, signed_by=signed_by)
            failpoints.hit("import.after_record")
        return digest

    # CreatePatch

    def CreatePatch(self, request, context):
        why = self.cp.operations.available()
        if why:
            raise precondition("EDITOR_UNAVAILABLE", why)
        from factpatch.core import spec
        try:
            edits = spec.parse_text(request.spec, name="spec").edits
        except spec.SpecError as e:
            raise invalid("INVALID_SPEC", str(e), field="spec") from None
        if request.method and request.method not in ("rome", "memit"):
            raise invalid("INVALID_METHOD", f"method must be 'rome' or 'memit', got {request.method!r}", field="method")
        op = self.cp.operations.submit(edits, request.method, call_principal())
        return self._operation(op)

    def _operation(self, op) -> patch_pb2.Operation:
        msg = patch_pb2.Operation(
            name=op.name, done=op.done, stage=op.stage, progress=op.progress, message=op.message,
            created=convert.ts(op.created), updated=convert.ts(op.updated),
        )
        if op.digest:
            msg.patch.CopyFrom(self._patch(op.digest))
        elif op.done:
            msg.error.CopyFrom(status_pb2.Status(code=code_pb2.FAILED_PRECONDITION, message=f"{op.error_reason}: {op.error}"))
        return msg

    def GetOperation(self, request, context):
        op = self.cp.operations.get(request.name)
        if op is None:
            raise not_found("OPERATION_NOT_FOUND", f"no operation {request.name!r} (operations do not survive a restart)")
        return self._operation(op)

    # import / read / delete

    def ImportPatch(self, request_iterator, context):
        call = current_call.get()
        first = next(request_iterator, None)
        if first is None or first.WhichOneof("part") != "header":
            raise invalid("MISSING_HEADER", "the first ImportPatch message must be the header", field="header")
        header = first.header
        call.request_id = header.request_id
        limit = self.cp.max_patch_bytes
        if header.size_bytes > limit:
            raise invalid("PATCH_TOO_LARGE", f"size_bytes {header.size_bytes} exceeds the limit of {limit} bytes",
                          limit=str(limit), field="header.size_bytes")
        if header.expected_digest:
            check_digest(header.expected_digest, "header.expected_digest")
        buf, h = bytearray(), hashlib.sha256()
        for msg in request_iterator:
            if msg.WhichOneof("part") != "chunk":
                raise invalid("DUPLICATE_HEADER", "only the first ImportPatch message may be a header", field="header")
            if len(buf) + len(msg.chunk) > limit:
                raise invalid("PATCH_TOO_LARGE", f"upload exceeds the limit of {limit} bytes", limit=str(limit), field="chunk")
            buf += msg.chunk
            h.update(msg.chunk)
        digest = "sha256:" + h.hexdigest()
        call.target = f"digest={digest}"
        if header.expected_digest and header.expected_digest != digest:
            raise invalid(Refusal.DIGEST_MISMATCH, f"received bytes hash to {digest}, the header says {header.expected_digest}",
                          received=digest, field="header.expected_digest")
        if header.size_bytes and header.size_bytes != len(buf):  # a cut-short or overlong upload
            raise invalid("SIZE_MISMATCH", f"received {len(buf)} bytes, the header says size_bytes {header.size_bytes}",
                          field="header.size_bytes")
        # The request is identified by the header and the bytes' digest, not by the whole upload.
        req_hash = request_hash(header.SerializeToString(deterministic=True) + digest.encode())
        idem = self.cp.idempotency
        if header.request_id:
            replay = idem.replay(header.request_id, IMPORT_METHOD, req_hash)
            if replay is not None:
                return replay
        try:
            stored = self.store_patch(bytes(buf), call.principal.name, header.signature or None)
            resp = self._patch(stored)
        except ApiError as e:
            if header.request_id:
                idem.save_error(header.request_id, IMPORT_METHOD, req_hash, e)
            raise
        if header.request_id:
            idem.save(header.request_id, IMPORT_METHOD, req_hash, resp)
        return resp

    def GetPatch(self, request, context):
        return self._patch(request.digest)

    def ListPatches(self, request, context):
        size, offset = page_size(request.page_size), page_offset(request.page_token)
        # Manifests grow with their edits: a page stops before the client's message limit, and pages on.
        patches, token = offset_page(self.cp.db.patches(size + 1, offset), size, offset, lambda r: self._patch(r["digest"]))
        return patch_pb2.ListPatchesResponse(patches=patches, next_page_token=token)

    def DeletePatch(self, request, context):
        self._patch(request.digest)  # NOT_FOUND first
        users = self.cp.db.patch_users(request.digest)
        if users:
            raise precondition("PATCH_DEPLOYED", f"{request.digest} is in use by {', '.join(users)}", users=",".join(users))
        self.cp.db.delete_patch(request.digest)
        self.cp.store.delete(request.digest)
        return patch_pb2.DeletePatchResponse(digest=request.digest)

    def GetPatchBlob(self, request, context):
        self._patch(request.digest)
        try:
            data = self.cp.store.get(request.digest)
        except StoreCorrupt as e:
            raise ApiError(grpc.StatusCode.DATA_LOSS, "STORE_CORRUPT", str(e)) from None
        except FileNotFoundError:
            raise ApiError(grpc.StatusCode.DATA_LOSS, "STORE_CORRUPT", f"{request.digest} is recorded but its file is gone") from None
        for i in range(0, max(len(data), 1), BLOB_CHUNK):
            if i == 0:
                yield patch_pb2.PatchBlobChunk(data=data[:BLOB_CHUNK], total_size=len(data), digest=request.digest)
            else:
                yield patch_pb2.PatchBlobChunk(data=data[i:i + BLOB_CHUNK])
