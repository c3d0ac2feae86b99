"""enumwatch: Elastic's anonymous-enumeration rule, run in-cluster on the API server's audit log."""

__version__ = "0.1.0"
