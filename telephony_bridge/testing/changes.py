"""Waiting, in a test double, until something it records makes a condition true."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

__all__ = ["Changes"]


class Changes:
    """Wakes waiters whenever something is recorded; they re-check their own condition."""

    def __init__(self) -> None:
        self._event = asyncio.Event()

    def fire(self) -> None:
        self._event.set()
        self._event = asyncio.Event()

    async def wait_until(self, check: Callable[[], Any], timeout: float, what: str) -> Any:
        """The first truthy ``check()``; ``TimeoutError`` naming ``what`` after ``timeout`` s."""
        try:
            async with asyncio.timeout(timeout):
                while True:
                    result = check()
                    if result is not None and result is not False:
                        return result
                    await self._event.wait()
        except TimeoutError as exc:
            if exc.args:
                raise
            raise TimeoutError(f"{what} did not happen within {timeout} s") from None

