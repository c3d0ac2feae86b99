"""References to enumwatch objects, as other objects (Events, Findings) point at them."""

from __future__ import annotations

from dataclasses import dataclass

from enumwatch.api.names import API_VERSION, DETECTOR_KIND


@dataclass(frozen=True)
class DetectorRef:
    """The detector object a tick belongs to (for names, labels and Events)."""

    namespace: str
    name: str
    uid: str

    def involved_object(self) -> dict[str, str]:
        """The detector as an Event's ``involvedObject``."""
        return {
            "apiVersion": API_VERSION,
            "kind": DETECTOR_KIND,
            "name": self.name,
            "namespace": self.namespace,
            "uid": self.uid,
        }
