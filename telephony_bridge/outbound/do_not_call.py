"""The do-not-call list: numbers the bridge never dials, kept in the call log's database.

Checked before every dial; a person who asks not to be called again (the model's `opt_out`) is added
when their call ends, and operators manage it with `telephony-bridge dnc` and `/admin/dnc`. In a fleet
(`DATABASE_URL`) the list is the fleet's, in PostgreSQL (`store/do_not_call.py`), so a number listed on one
instance is never dialled by another. Without either the list lives in memory and is lost at restart (the
bridge logs that at start-up).
Every read and write runs off the event loop on a short-lived connection: a few per dial, each under
a millisecond on a local file.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path

from telephony_bridge.call_log import open_for_writing
from telephony_bridge.store.do_not_call import FleetDoNotCall

__all__ = ["DoNotCall", "add_number", "list_numbers", "listed", "remove_number"]


def listed(path: Path, number: str) -> bool:
    connection = open_for_writing(path)
    try:
        return connection.execute("SELECT 1 FROM do_not_call WHERE number = ?", (number,)).fetchone() is not None
    finally:
        connection.close()


def add_number(path: Path, number: str, source: str) -> bool:
    """Add `number`; whether it was new to the list."""
    connection = open_for_writing(path)
    try:
        with connection:
            cursor = connection.execute(
                "INSERT OR IGNORE INTO do_not_call (number, added_at, source) VALUES (?, ?, ?)",
                (number, datetime.now(UTC).isoformat(), source),
            )
        return cursor.rowcount == 1
    finally:
        connection.close()


def remove_number(path: Path, number: str) -> bool:
    """Remove `number`; whether it was on the list."""
    connection = open_for_writing(path)
    try:
        with connection:
            cursor = connection.execute("DELETE FROM do_not_call WHERE number = ?", (number,))
        return cursor.rowcount == 1
    finally:
        connection.close()


def list_numbers(path: Path) -> list[dict[str, str]]:
    """Every listed number with when and why it was added, oldest first."""
    connection = open_for_writing(path)
    try:
        rows = connection.execute("SELECT number, added_at, source FROM do_not_call ORDER BY added_at, number").fetchall()
    finally:
        connection.close()
    return [{"number": number, "added_at": added_at, "source": source} for number, added_at, source in rows]


class DoNotCall:
    """The list as the server uses it: in the fleet's PostgreSQL (`fleet`), in the call log's file at `path`, or in
    memory without either. Outbound outcomes are kept where the list is (not in memory)."""

    def __init__(self, path: Path | None, fleet: FleetDoNotCall | None = None) -> None:
        self.path = path
        self._fleet = fleet
        self._memory: dict[str, dict[str, str]] = {}

    @property
    def keeps_outcomes(self) -> bool:
        return self._fleet is not None or self.path is not None

    async def record_outcome(self, outcome: dict[str, str | None]) -> None:
        if self._fleet is not None:
            await self._fleet.record_outcome(outcome)
        elif self.path is not None:
            await asyncio.to_thread(record_outcome, self.path, outcome)

    async def contains(self, number: str) -> bool:
        if self._fleet is not None:
            return await self._fleet.contains(number)
        if self.path is None:
            return number in self._memory
        return await asyncio.to_thread(listed, self.path, number)

    async def add(self, number: str, source: str) -> bool:
        if self._fleet is not None:
            return await self._fleet.add(number, source)
        if self.path is None:
            new = number not in self._memory
            self._memory.setdefault(number, {"number": number, "added_at": datetime.now(UTC).isoformat(), "source": source})
            return new
        return await asyncio.to_thread(add_number, self.path, number, source)

    async def remove(self, number: str) -> bool:
        if self._fleet is not None:
            return await self._fleet.remove(number)
        if self.path is None:
            return self._memory.pop(number, None) is not None
        return await asyncio.to_thread(remove_number, self.path, number)

    async def numbers(self) -> list[dict[str, str]]:
        if self._fleet is not None:
            return await self._fleet.numbers()
        if self.path is None:
            return sorted(self._memory.values(), key=lambda entry: (entry["added_at"], entry["number"]))
        return await asyncio.to_thread(list_numbers, self.path)


def record_outcome(path: Path, outcome: dict[str, str | None]) -> None:
    """Keep one outbound call's outcome (busy and unanswered calls included, which never reach the calls table)."""
    connection = open_for_writing(path)
    try:
        with connection:
            connection.execute(
                "INSERT OR REPLACE INTO outbound_calls (outbound_id, call_sid, from_number, to_number, campaign_row, ended_at, "
                "outcome, amd_result) VALUES (:outbound_id, :call_sid, :from_number, :to_number, :campaign_row, :ended_at, "
                ":outcome, :amd_result)",
                outcome,
            )
    finally:
        connection.close()
