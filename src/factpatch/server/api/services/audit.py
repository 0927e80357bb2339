"""AuditService: read the audit log and verify its hash chain."""

from __future__ import annotations

from factpatch.server.api.convert import ts
from factpatch.server.api.errors import invalid
from factpatch.server.api.paging import within_page_bytes
from factpatch.server.state.audit import AuditEntry, AuditLog
from factpatch.v1 import audit_pb2, audit_pb2_grpc

MAX_LIMIT = 1000


def record_pb(e: AuditEntry) -> audit_pb2.AuditRecord:
    return audit_pb2.AuditRecord(id=e.id, time=ts(e.time), principal=e.principal, source=e.source, method=e.method,
                                 request_id=e.request_id, target=e.target, result=e.result, detail=e.detail)


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
