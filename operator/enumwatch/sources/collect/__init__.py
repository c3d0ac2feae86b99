"""``enumwatch collect``: audit events from a managed cluster's log service, to the operator.

On EKS, GKE and AKS the control plane is the provider's: no audit file to tail, no webhook to
configure. The audit events go to the provider's log service instead, and this package pulls
them from there and forwards them to ``/ingest`` through the same
:class:`~enumwatch.sources.forwarder.Outbox` and
:class:`~enumwatch.sources.forwarder.Forwarder` as the tailer. One module per job:

* :mod:`.eks`, :mod:`.gke`, :mod:`.aks`: the pure mappings from a provider's record to an
  ``audit.k8s.io/v1`` Event (the README's mapping tables), with :mod:`.records` for the
  reasons a record is skipped;
* :mod:`.cloudwatch`, :mod:`.pubsub`, :mod:`.blob`: the pollers, each with its own position
  (a token per log stream, acknowledgements, an offset per blob); only the chosen one is
  imported, and with it its provider's SDK;
* :mod:`.collector`: the read loop that maps, filters and queues, and the counters.
"""
