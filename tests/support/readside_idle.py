"""Waiting for a projection's workers to prove they are idle, instead of sleeping (issue 23,
item 5): "no stray redelivery" may only be asserted once the tag stream has nothing left to
deliver. Budgets are generous upper bounds that fail loudly, never the thing under test."""

from __future__ import annotations

import asyncio
import time
from typing import Any

__all__ = ["until_caught_up"]


async def _until(pred: Any, timeout: float, what: str, interval: float) -> None:
    deadline = time.monotonic() + timeout
    while not await pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(interval)


async def until_caught_up(
    control: Any, name: str, written_at: float, delay: float, timeout: float = 120
) -> None:
    """Every event written by ``written_at`` (``time.time()``) is visible to the tag query
    (``delay``, its visibility delay, has passed), and every worker of projection ``name`` has
    handled all visible events (``lag_events`` 0) and committed the offset it handled: a stray
    redelivery would have happened by then."""

    async def visible() -> bool:
        return time.time() > written_at + delay

    async def caught_up() -> bool:
        statuses = await control.status(name)
        # a worker slow to answer is reported from its stored row, without a lag: not yet
        return bool(statuses) and all(
            s.get("lag_events") == 0 and s.get("offset") == s.get("committed_offset")
            for s in statuses
        )

    await _until(visible, timeout, "the visibility delay", 0.05)
    await _until(caught_up, timeout, f"every worker of {name} at the journal's end", 0.2)
