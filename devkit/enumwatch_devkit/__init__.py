"""enumwatch's development and test kit: never shipped in the enumwatch wheel or image.

A real local control plane (:mod:`~enumwatch_devkit.controlplane`, with its certificates in
:mod:`~enumwatch_devkit.pki` and its processes in :mod:`~enumwatch_devkit.processes`), the dev
stack on it (:mod:`~enumwatch_devkit.devstack`, driven by ``python -m enumwatch_devkit``), synthetic
audit logs (:mod:`~enumwatch_devkit.corpus`) and the helpers the tests and benchmarks share
(:mod:`~enumwatch_devkit.operatorkit`, :mod:`~enumwatch_devkit.auditlog`,
:mod:`~enumwatch_devkit.tail_receiver`, :mod:`~enumwatch_devkit.duckdb_rule`).
"""
