"""Outputs: Findings carried to the tools people already run, beside the Finding CRs.

The Finding CR stays the source of truth; an output is derived from it and may be rebuilt from it.
"""
