"""EKS: the audit events in CloudWatch Logs are the API server's own, one per log event.

EKS ships its control plane's audit log (log type ``audit``) to the log group
``/aws/eks/<cluster>/cluster``, in streams named ``kube-apiserver-audit-<id>`` (one per API server
instance). Each log event's ``message`` is one ``audit.k8s.io/v1`` Event exactly as the API
server wrote it, so the mapping is the identity: nothing is rebuilt, and the byte prefilter
applies to it as to the tailer's lines. What can go wrong is the log service's: CloudWatch cuts
an event above 256 KiB (EKS then ends the message with ``[Truncated...]``), which leaves it
unparseable; such a message is counted as malformed (by the filter, which parses it) and skipped.
"""

from __future__ import annotations

#: The log streams of the API servers' audit logs in an EKS cluster's log group.
AUDIT_STREAM_PREFIX = "kube-apiserver-audit"


def log_group_of(cluster: str) -> str:
    """The CloudWatch log group EKS writes a cluster's control-plane logs to."""
    return f"/aws/eks/{cluster}/cluster"


def event_from_message(message: bytes) -> bytes:
    """The audit Event (JSON) of one CloudWatch log event's message: the message itself."""
    return message


def cluster_of_log_group(group: str) -> str | None:
    """The cluster a log group named by :func:`log_group_of` belongs to; ``None`` for another
    group (a log group the user named otherwise, or a subscription's destination)."""
    parts = group.strip("/").split("/")
    if len(parts) == 4 and parts[0] == "aws" and parts[1] == "eks" and parts[3] == "cluster":
        return parts[2] or None
    return None
