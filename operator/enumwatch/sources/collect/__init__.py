"""``enumwatch collect``: audit events from a managed cluster's log service, to the operator.

On EKS, GKE and AKS the control plane is the provider's: no audit file to tail, no webhook to
configure. The audit events go to the provider's log service instead, and this package pulls
them from there and forwards them to ``/ingest`` through the same
:class:`~enumwatch.sources.forwarder.Outbox` and
:class:`~enumwatch.sources.forwarder.Forwarder` as the tailer. One module per job:

* the pure mappings from a record to ``audit.k8s.io/v1`` Events live in the audit layer, shared
  with ``enumwatch scan`` and ``enumwatch sql``: :mod:`enumwatch.audit.envelopes` (which shape a
  payload is, and the cluster it names), over :mod:`enumwatch.audit.eks`,
  :mod:`enumwatch.audit.gke`, :mod:`enumwatch.audit.aks` (the README's mapping tables) and
  :mod:`enumwatch.audit.skip_reasons` (the reasons a record is skipped);
* :mod:`.cloudwatch`, :mod:`.pubsub`, :mod:`.blob`, :mod:`.kafka`: the pollers, each with its
  own position (a token per log stream, acknowledgements, an offset per blob, a consumer group's
  committed offsets); only the chosen one is imported, and with it its provider's SDK;
* :mod:`.page`: what a poller is to the collector (:class:`~.page.LogSource`, :class:`~.page.Page`);
  the pollers import it, and :mod:`.state`, and nothing else of this package;
* :mod:`.source_registry`: the ``--source`` table, one row per scheme naming its poller's opener by
  dotted path, imported only when used (so no import edge from the table to the pollers);
* :mod:`.collector`: the read loop that maps, filters and queues, and the counters.
"""
