"""The sink: rule rows become Finding objects and Kubernetes Events.

``aggregates`` maps a row to the Finding's evidence, ``plan`` decides what a row does to its
Finding (pure), ``findings`` writes it.
"""
