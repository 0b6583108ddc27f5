"""Small asyncio helpers shared by the stages and the edge."""

from __future__ import annotations


def first_leaf(error: BaseException) -> BaseException:
    """The first real exception inside (possibly nested) exception groups from TaskGroups."""
    while isinstance(error, BaseExceptionGroup):
        error = error.exceptions[0]
    return error
