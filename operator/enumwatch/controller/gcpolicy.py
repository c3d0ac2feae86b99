"""The operator's garbage-collector policy: long-lived objects are moved out of the collector's
way, so that no full collection holds the event loop (and ``/healthz``) for long.

Why: CPython's full (generation 2) collection traverses every tracked object that is alive. The
operator keeps many of them for long: its window state at its budget, the events of a large
``/ingest`` body (100k items), the modules it imported. Measured by ``bench/loop_stall_bench.py``
(see ``docs/operations.md``), full collections during a 100k-item ingest held the loop for
0.3-0.9 s each. :func:`gc.freeze` moves the objects alive now to the permanent generation, which
no collection traverses; reference counting still frees them when the last reference goes (the
window state and the events are acyclic), so freezing does not keep them alive.

What it must not do is freeze cyclic garbage, which only the collector can free: :func:`settle`
collects first, and since everything older was frozen at the previous settle, that collection
only traverses what was allocated since (a chunk of a body, a tick's work: milliseconds). What
stays: an object alive when frozen that later becomes part of an unreachable cycle is kept; the
operator's long-lived structures hold no cycles, and ``bench/gc_freeze_bench.py`` shows memory
flat over repeated ticks and ingests with this policy.

Called from the operator's shell only (start-up, after each tick round that evaluated, between
the parts of a large body and after it is committed): never from the pure core.

:func:`configure` also makes the young generation :data:`YOUNG` objects rather than 700: the
ingest allocates a few objects per event, and at 1,000 events/s the default made young
collections 30x as frequent (a tenth of the operator's CPU, with the start-up freeze).
"""

from __future__ import annotations

import gc

#: Allocations between two young-generation collections (CPython's default: 700).
YOUNG = 20_000


def configure() -> None:
    """At start-up: the young generation's threshold, then :func:`settle` what is imported."""
    gc.set_threshold(YOUNG, *gc.get_threshold()[1:])
    settle()


def settle() -> None:
    """Collect what was allocated since the last settle, then freeze the survivors."""
    gc.collect()
    gc.freeze()
