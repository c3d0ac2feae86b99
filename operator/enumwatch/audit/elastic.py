"""Audit events exported from Elastic: ``kubernetes.audit.*`` documents back to raw Events.

The seed rule was written for Elastic, so its users have audit events in Elasticsearch and will
want to backtest on an export of them. Elastic's Kubernetes integration stores a raw audit
``Event`` under ``kubernetes.audit.`` with its keys nested, dotted, or both (``{"kubernetes":
{"audit.verb": ...}}`` and ``{"kubernetes.audit.verb": ...}`` mean the same), and with the dots
of the decision annotation's key turned into underscores. This module only rebuilds the raw
``Event`` object from such a document; decoding it is :mod:`enumwatch.audit.decode`'s job, the
same as for a line of the apiserver's own log.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from enumwatch.audit.event import CLUSTER_ANNOTATION, DECISION_ANNOTATION

#: The decision annotation's key as Elastic's integration stores it (dots become underscores).
ELASTIC_DECISION_ANNOTATION = "authorization_k8s_io/decision"
#: The cluster annotation's key as Elastic's integration would store it.
ELASTIC_CLUSTER_ANNOTATION = "enumwatch_io/cluster"
#: The annotations read from an Elastic document: each raw key, as written and as Elastic
#: spells it.
_ANNOTATIONS = {
    DECISION_ANNOTATION: DECISION_ANNOTATION,
    ELASTIC_DECISION_ANNOTATION: DECISION_ANNOTATION,
    CLUSTER_ANNOTATION: CLUSTER_ANNOTATION,
    ELASTIC_CLUSTER_ANNOTATION: CLUSTER_ANNOTATION,
}
#: The prefix of every audit field in an Elastic document.
ELASTIC_PREFIX = "kubernetes.audit."
#: Skip reason: two keys of a document spell the same field (nested and dotted, or twice).
CONFLICTING_KEYS = "conflicting_keys"


def is_elastic_document(obj: Mapping[str, Any]) -> bool:
    """Whether ``obj`` is shaped like an Elastic document (``kubernetes.audit.*`` fields)."""
    if "kubernetes" in obj:
        return True
    return any(key.startswith("kubernetes.") for key in obj)


def _flatten(obj: dict[str, Any], prefix: str, out: dict[str, Any]) -> bool:
    """Flatten nested keys to dotted paths into ``out``; ``False`` if two spell the same path."""
    for key, value in obj.items():
        path = prefix + key
        if type(value) is dict and value:
            if not _flatten(value, path + ".", out):
                return False
        elif path in out:
            return False
        else:
            out[path] = value
    return True


def elastic_to_raw(obj: dict[str, Any]) -> dict[str, Any] | str:
    """Rebuild the raw Event object from an Elastic document with nested or dotted keys.

    Keys are flattened to dotted paths (so ``{"kubernetes": {"audit.verb": ...}}`` and
    ``{"kubernetes.audit.verb": ...}`` read alike) and nested again below ``kubernetes.audit.``;
    annotation keys are taken whole because they contain dots themselves. Returns
    :data:`CONFLICTING_KEYS` when two keys spell the same field.
    """
    flat: dict[str, Any] = {}
    if not _flatten(obj, "", flat):
        return CONFLICTING_KEYS
    raw: dict[str, Any] = {}
    annotations_prefix = ELASTIC_PREFIX + "annotations."
    for path, value in flat.items():
        if not path.startswith(ELASTIC_PREFIX):
            continue
        if path.startswith(annotations_prefix):
            key = _ANNOTATIONS.get(path[len(annotations_prefix) :])
            if key is not None:
                annotations = raw.setdefault("annotations", {})
                if type(annotations) is not dict:
                    return CONFLICTING_KEYS
                annotations[key] = value
            continue
        parts = path[len(ELASTIC_PREFIX) :].split(".")
        node = raw
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if type(child) is not dict:
                return CONFLICTING_KEYS
            node = child
        leaf = parts[-1]
        if leaf in node and not (type(node[leaf]) is dict and value == {}):
            return CONFLICTING_KEYS
        node.setdefault(leaf, value)
    return raw
