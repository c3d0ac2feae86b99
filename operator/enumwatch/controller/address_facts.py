"""The facts behind source attribution: pods, nodes and services indexed by address, by kopf.

A ``@kopf.index`` on each kind keeps, per address, the few fields
:mod:`enumwatch.attribution` resolves with (:func:`~enumwatch.attribution.holder_of`: no object is
held), and a watch handler on pods tells the :class:`~enumwatch.attribution.AddressBook` when a
pod leaves its address (deleted or finished), so that a scan it made before is still its doing.
Cluster-wide, whatever namespaces the detectors are in: a scanner pod can live anywhere. RBAC:
get/list/watch on pods, nodes and services, nothing else.

kopf runs no other resource handler before its indexes are populated: the first call of a watch
handler here (there is always the ``kubernetes`` Service) means pods, nodes and services have been
listed, and the book may call an unknown address external from then on.
"""

from __future__ import annotations

import time
from typing import Any

import kopf

from enumwatch.attribution import AddressBook, AddressIndex, Kind, address_entries, holder_of
from enumwatch.controller import metrics

#: The kinds indexed, by their collection's plural (core API group).
PLURALS: dict[str, Kind] = {"pods": "pod", "nodes": "node", "services": "service"}
#: The kopf index of the addresses (a handler keyword argument of that name).
INDEX = "address_holders"


class AddressFacts:
    """Registers the address index and the gone-pod memory for an :class:`AddressBook`."""

    #: What these facts are, and the collections they list and watch (core API group).
    WHAT = "source attribution"
    GROUP = ""
    COLLECTIONS = tuple(PLURALS)

    def __init__(self, book: AddressBook) -> None:
        self.book = book
        #: Off when the RBAC does not let the operator list and watch all three kinds.
        self.enabled = True
        metrics.ADDRESSES.set_function(book.holder_count)
        metrics.ADDRESSES_AWAITED.set_function(book.awaited_count)
        metrics.ADDRESSES_SYNCED.set_function(lambda: 1 if book.synced else 0)

    def register(self, registry: kopf.OperatorRegistry) -> None:
        """The index and the watch handlers, on the three kinds."""

        def holders(resource: kopf.Resource, body: kopf.Body, **_: Any) -> dict[str, Any]:
            return address_entries(holder_of(PLURALS[resource.plural], dict(body)))

        async def seen(
            resource: kopf.Resource, type: str | None, body: kopf.Body, **_: Any
        ) -> None:
            self.book.synced = True  # kopf's indexes are populated before this runs
            self.book.observe(PLURALS[resource.plural], type, dict(body), time.time())

        for plural in PLURALS:
            kopf.index("", "v1", plural, id=INDEX, registry=registry)(holders)
            kopf.on.event("", "v1", plural, id=f"{plural}_seen", registry=registry)(seen)

    def start(self, index: AddressIndex) -> None:
        """Resolve over kopf's index ``index`` from now on."""
        self.book.index = index
