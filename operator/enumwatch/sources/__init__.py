"""Sources: what brings audit events to the operator's ``/ingest``, each with its own checkpoint.

Every source posts ``audit.k8s.io/v1`` ``EventList`` bodies (what the API server's own audit
webhook sends) and resumes from its own position after a restart. What they share lives here:
:mod:`.forwarder` (batching, the bounded buffer, backoff, auth, and handing a batch's position
back once the operator acknowledged it) and :mod:`.checkpoint` (a durable position in a rotating
file). :mod:`.tail` follows the API server's audit log file.
"""
