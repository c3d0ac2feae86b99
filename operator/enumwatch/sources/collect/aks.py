"""AKS: audit events archived by a diagnostic setting to a storage account, one record per line.

A diagnostic setting of an AKS cluster with the category ``kube-audit`` archives the API
server's audit log to the container ``insights-logs-kube-audit``, one append blob per cluster and
hour (``resourceId=/SUBSCRIPTIONS/.../MANAGEDCLUSTERS/<name>/y=YYYY/m=MM/d=DD/h=HH/m=00/PT1H.json``)
holding one JSON record per line. The audit event is *a string* in the record's
``properties.log``: exactly what the API server wrote, so the mapping only unwraps it. Records of
another category are foreign (``kube-audit-admin`` omits get and list, so it cannot show an
enumeration: it is skipped and counted too, and the README says to enable ``kube-audit``).
"""

from __future__ import annotations

from enumwatch.sources.collect.records import FOREIGN, MALFORMED, SkippedRecord, json_object

#: The container Azure Monitor archives the ``kube-audit`` category to.
AUDIT_CONTAINER = "insights-logs-kube-audit"
#: The diagnostic category with every audit event (``kube-audit-admin`` has no get/list).
AUDIT_CATEGORY = "kube-audit"
#: The name every hourly blob of a diagnostic archive ends with.
BLOB_SUFFIX = "PT1H.json"


def event_from_line(line: bytes) -> bytes:
    """The audit Event (JSON) of one line of a ``PT1H.json`` blob: its ``properties.log``."""
    record = json_object(line, "the diagnostic record")
    category = record.get("category")
    if category is not None and category != AUDIT_CATEGORY:
        raise SkippedRecord(FOREIGN, f"category {category!r} is not {AUDIT_CATEGORY}")
    properties = record.get("properties")
    if not isinstance(properties, dict):
        raise SkippedRecord(MALFORMED, "properties is missing or not an object")
    log = properties.get("log")
    if not isinstance(log, str):
        raise SkippedRecord(MALFORMED, "properties.log is missing or not a string")
    return log.strip().encode()
