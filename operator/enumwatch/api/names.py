"""The API's names, spelt once: group, version, kinds, plurals and the labels the operator sets.

The CRD generator, the sink (Findings, Events), the operator's watch and the manifest loader all
name the same objects; a rename happens here and nowhere else.
"""

from __future__ import annotations

GROUP = "enumwatch.io"
VERSION = "v1alpha1"
#: ``apiVersion`` of every enumwatch object.
API_VERSION = f"{GROUP}/{VERSION}"

DETECTOR_KIND = "EnumerationDetector"
DETECTOR_PLURAL = "enumerationdetectors"
FINDING_KIND = "Finding"
FINDING_PLURAL = "findings"

#: Label on a Finding naming its detector (same namespace): retention lists Findings by it.
DETECTOR_LABEL = f"{GROUP}/detector"
#: The standard label on every object the operator creates; the retention sweep lists by it.
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
MANAGED_BY = "enumwatch"
#: ``reportingComponent`` of the Events the operator posts.
REPORTING_COMPONENT = f"{GROUP}/operator"
