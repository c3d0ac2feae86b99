"""Outputs: Findings carried to the tools people already run, beside the Finding CRs.

The Finding CR stays the source of truth; an output is derived from it and may be rebuilt from it.
They sit beside the sink (layer 4) and never hold a tick up. PolicyReports / OpenReports Reports
(:mod:`~enumwatch.outputs.policyreport`) are rebuilt per namespace after a tick's writes;
Alertmanager and generic webhooks (:mod:`~enumwatch.outputs.dispatch`) are handed what the sink
wrote, queue it (bounded) and a task of their own delivers it with retries.
"""
