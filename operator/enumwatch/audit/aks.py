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

from typing import Any

from enumwatch.audit.skip_reasons import FOREIGN, MALFORMED, SkippedRecord, json_object

#: The container Azure Monitor archives the ``kube-audit`` category to.
AUDIT_CONTAINER = "insights-logs-kube-audit"
#: The diagnostic category with every audit event (``kube-audit-admin`` has no get/list).
AUDIT_CATEGORY = "kube-audit"
#: The name every hourly blob of a diagnostic archive ends with.
BLOB_SUFFIX = "PT1H.json"


def event_from_line(line: bytes) -> bytes:
    """The audit Event (JSON) of one line of a ``PT1H.json`` blob: its ``properties.log``."""
    return event_from_record(json_object(line, "the diagnostic record"))


def event_from_record(record: dict[str, Any]) -> bytes:
    """The audit Event (JSON) of one parsed diagnostic record (a blob's line, or an item of the
    ``records`` batch Azure Monitor sends to Event Hubs): its ``properties.log``."""
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


#: The path segment before a managed cluster's name in an Azure resource ID.
_MANAGED_CLUSTERS = "managedclusters"


def cluster_of_resource_id(resource_id: object) -> str | None:
    """The AKS cluster a diagnostic record's ``resourceId`` names, lower-cased: Azure Monitor
    writes the whole ID upper-cased (``.../PROVIDERS/MICROSOFT.CONTAINERSERVICE/MANAGEDCLUSTERS/
    PROD-1``) while Azure names are case-insensitive and written lower-case everywhere else
    (``az aks list``, the kubeconfig context). ``None`` when it names no managed cluster."""
    if not isinstance(resource_id, str):
        return None
    parts = resource_id.strip("/").split("/")
    for index, part in enumerate(parts[:-1]):
        if part.lower() == _MANAGED_CLUSTERS:
            return parts[index + 1].lower() or None
    return None
