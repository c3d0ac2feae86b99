"""The enumwatch API, written once as Python types: the CRDs are generated from these modules.

The lowest layer: pure pydantic models and constants, no I/O and no import of the engine, so that
the rule, the sink, the operator, the CLIs and the CRD generator all read the same definitions.
"""
