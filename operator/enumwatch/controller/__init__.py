"""The operator shell: kopf handlers, the ticker, the detectors' state, ingest, leadership.

Everything here is I/O around the pure core (``rule``, ``windows``) and the sink: it is the only
layer that imports kopf.
"""
