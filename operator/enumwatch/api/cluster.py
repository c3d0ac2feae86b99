"""What a cluster name may be: one definition for every place a name enters (issue 23).

A name is stamped by a forwarder (``tail``/``collect --cluster-name``), pinned to an ingest
token (``run --ingest-cluster``), read from an event's ``enumwatch.io/cluster`` annotation,
listed in a detector's ``spec.match.clusters`` and written on a Finding (``spec.cluster``, its
name's hash, alert labels, metrics labels). The syntax is checked where a name enters, so that
everything downstream can print, hash and label it without escaping: letters, digits, ``-``,
``_`` and ``.``, starting and ending with a letter or digit, at most 100 characters (EKS allows
100, GKE 40, AKS 63: every provider's names fit).
"""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import Field

#: The syntax of a cluster name (the CRD's pattern and the Python check are this one string).
CLUSTER_NAME_PATTERN = r"^[A-Za-z0-9]([A-Za-z0-9_.-]{0,98}[A-Za-z0-9])?$"
CLUSTER_NAME_MAX = 100
_CLUSTER_NAME_RE = re.compile(CLUSTER_NAME_PATTERN)

#: A cluster name field of the API (CRD pattern and length generated from it).
ClusterName = Annotated[
    str, Field(pattern=CLUSTER_NAME_PATTERN, min_length=1, max_length=CLUSTER_NAME_MAX)
]


def is_cluster_name(value: object) -> bool:
    """Whether ``value`` is a string with the syntax of a cluster name."""
    return type(value) is str and _CLUSTER_NAME_RE.fullmatch(value) is not None


def check_cluster_name(value: str, where: str = "cluster name") -> str:
    """``value`` when it is a valid cluster name, else a ``ValueError`` that says what is
    allowed (for flags and settings a person typed)."""
    if not is_cluster_name(value):
        raise ValueError(
            f"invalid {where} {value!r}: use 1 to {CLUSTER_NAME_MAX} letters, digits, '-', '_' "
            "or '.', starting and ending with a letter or digit (e.g. prod-eu-1)"
        )
    return value
