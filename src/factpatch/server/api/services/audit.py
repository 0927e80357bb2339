"""AuditService: read the audit log and verify its hash chain."""

from __future__ import annotations

from factpatch.server.api.convert import ts
from factpatch.server.api.errors import invalid
from factpatch.server.state.audit import AuditEntry, AuditLog
from factpatch.v1 import audit_pb2, audit_pb2_grpc

MAX_LIMIT = 1000
# A page stops before its records pass this many bytes: a client accepts 4 MiB by default, and records
# carry what callers sent (request ids, targets, details), so 1,000 of them can be far larger.
MAX_PAGE_BYTES = 3 * 2**20


def record_pb(e: AuditEntry) -> audit_pb2.AuditRecord:
    return audit_pb2.AuditRecord(id=e.id, time=ts(e.time), principal=e.principal, source=e.source, method=e.method,
                                 request_id=e.request_id, target=e.target, result=e.result, detail=e.detail)


def within_page_bytes(records: list[audit_pb2.AuditRecord], budget: int = MAX_PAGE_BYTES) -> list[audit_pb2.AuditRecord]:
    """The newest records that fit in `budget` bytes (the first always: a page is never empty while there
    are records); the caller pages on from the last one's id."""
    out, size = [], 0
    for r in records:
        size += r.ByteSize() + 8  # the field's tag and length
        if out and size > budget:
            break
        out.append(r)
    return out


class AuditService(audit_pb2_grpc.AuditServiceServicer):
    def __init__(self, audit: AuditLog):
        self.audit = audit

    def ListAuditRecords(self, request, context):
        if not 0 <= request.limit <= MAX_LIMIT:
            raise invalid("BAD_LIMIT", f"limit must be 0-{MAX_LIMIT} (0: 100), got {request.limit}", field="limit")
        if request.before_id < 0:
            raise invalid("BAD_PAGE", f"before_id must be a record id, got {request.before_id}", field="before_id")
        self.audit.flush_refusals()  # exact counts of refused-call records before they are read
        entries = self.audit.entries(request.limit or 100, request.before_id, request.principal)
        return audit_pb2.ListAuditRecordsResponse(records=within_page_bytes([record_pb(e) for e in entries]),
                                                  head_hash=self.audit.head())

    def VerifyAuditLog(self, request, context):
        v = self.audit.verify()
        return audit_pb2.VerifyAuditLogResponse(intact=v.intact, records=v.records, events=v.events, head_hash=v.head,
                                                first_broken_record=v.first_broken_record, problem=v.problem)
