"""Where Findings go besides the API server: Alertmanager and generic webhooks.

The Finding CR stays the source of truth; the outputs tell the tools people already watch. They
sit beside the sink (layer 4) and never hold a tick up: the ticker hands them what the sink wrote,
they queue it (bounded) and a task of their own delivers it with retries.
"""
