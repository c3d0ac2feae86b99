"""The typed decoder of apiserver audit events, in C (``_typed.c``; see
:mod:`enumwatch.audit.decode`)."""

from typing import Any

def decode(
    data: bytes | memoryview, is_list: bool, pinned: str | None, identities: bool
) -> (
    tuple[list[tuple[Any, ...]], list[float | None], list[bytes | None] | None, set[str]] | None
): ...

def decode_events(
    data: bytes | memoryview, is_list: bool, pinned: str | None
) -> tuple[list[Any], int, set[str]] | None: ...
def configure(event_type: type, attributes: tuple[str, ...], sources: tuple[int, ...]) -> None: ...
