"""Stamping the cluster an event came from on the raw event, before it is forwarded (issue 23).

A forwarder (``enumwatch tail``, ``enumwatch collect``) knows which cluster it reads; the event
itself does not say (the API server writes no cluster name). So the forwarder writes it where
every reader already looks, the event's audit annotations, under
:data:`~enumwatch.audit.event.CLUSTER_ANNOTATION`; the decoder reads it from there into
``AuditEvent.cluster``. The API server never writes that annotation and a client cannot set audit
annotations, so a stamp is exactly as trusted as the forwarder that wrote it (and the operator's
ingest can pin a token to one cluster, overriding whatever the body says).

These are the one definition of a stamp, on a parsed event (:func:`stamp_cluster`, for a module
that builds events from provider records, e.g. a payload's cluster name) and on a raw line
(:func:`stamp_cluster_line`, what the sources forward). Pure: no I/O.
"""

from __future__ import annotations

from typing import Any

import orjson

from enumwatch.api.cluster import is_cluster_name
from enumwatch.audit.event import CLUSTER_ANNOTATION


def stamp_cluster(event: dict[str, Any], name: str, *, replace: bool = True) -> bool:
    """Write ``name`` as the cluster of the raw ``audit.k8s.io/v1`` Event object ``event``, in
    place; ``replace=False`` keeps a stamp already there (a name read from the record itself).

    Returns whether the event carries ``name`` now. An event whose ``annotations`` is not an
    object is left as it is (``False``): the operator's decoder counts it as a wrong type, and
    a stamp must not turn a malformed event into a well-formed one. A ``name`` that is not a
    cluster name (:func:`enumwatch.api.cluster.is_cluster_name`; e.g. read from a record) is not
    written (``False``): the operator would skip the event for it, and an unnamed event still
    counts.
    """
    if not is_cluster_name(name):
        return False
    annotations = event.get("annotations")
    if annotations is None:
        event["annotations"] = {CLUSTER_ANNOTATION: name}
        return True
    if type(annotations) is not dict:
        return False
    if replace or CLUSTER_ANNOTATION not in annotations:
        annotations[CLUSTER_ANNOTATION] = name
    return bool(annotations[CLUSTER_ANNOTATION] == name)


def stamp_cluster_line(line: bytes, name: str, *, replace: bool = True) -> bytes:
    """:func:`stamp_cluster` on one JSON line holding a raw Event: the stamped line, or the line
    unchanged when it is not one JSON object (the operator counts why, as it would have)."""
    try:
        event = orjson.loads(line)
    except orjson.JSONDecodeError:
        return line
    if type(event) is not dict or not stamp_cluster(event, name, replace=replace):
        return line
    return orjson.dumps(event)
