"""The do-not-call list and outbound outcomes on the fleet's PostgreSQL: every instance checks one list before it dials.

The same tables and rows as the SQLite call log's (`outbound/do_not_call.py`): the server reads and writes them through
the store's pool (one statement, about a millisecond on loopback), `telephony-bridge dnc` on a connection of its own.
"""

from __future__ import annotations

from datetime import UTC, datetime

import psycopg

from telephony_bridge.errors import CallLogError
from telephony_bridge.store.postgres import PostgresStore, _connect, redact

ADD = "INSERT INTO do_not_call (number, added_at, source) VALUES (%s, %s, %s) ON CONFLICT (number) DO NOTHING"
REMOVE = "DELETE FROM do_not_call WHERE number = %s"
LIST = "SELECT number, added_at, source FROM do_not_call ORDER BY added_at, number"
OUTCOME = (
    "INSERT INTO outbound_calls (outbound_id, call_sid, from_number, to_number, campaign_row, ended_at, outcome, amd_result) "
    "VALUES (%(outbound_id)s, %(call_sid)s, %(from_number)s, %(to_number)s, %(campaign_row)s, %(ended_at)s, %(outcome)s, "
    "%(amd_result)s) ON CONFLICT (outbound_id) DO UPDATE SET call_sid = EXCLUDED.call_sid, ended_at = EXCLUDED.ended_at, "
    "outcome = EXCLUDED.outcome, amd_result = EXCLUDED.amd_result"
)


class FleetDoNotCall:
    """`outbound.do_not_call.DoNotCall` over the store: raises `StoreUnavailable` when the database does not answer."""

    def __init__(self, store: PostgresStore) -> None:
        self._store = store

    async def contains(self, number: str) -> bool:
        return bool(await self._store.run("SELECT 1 FROM do_not_call WHERE number = %s", (number,)))

    async def add(self, number: str, source: str) -> bool:
        return bool(await self._store.run(ADD + " RETURNING 1", (number, datetime.now(UTC).isoformat(), source)))

    async def remove(self, number: str) -> bool:
        return bool(await self._store.run(REMOVE + " RETURNING 1", (number,)))

    async def numbers(self) -> list[dict[str, str]]:
        rows = await self._store.run(LIST)
        return [{"number": str(number), "added_at": str(added_at), "source": str(source)} for number, added_at, source in rows]

    async def record_outcome(self, outcome: dict[str, str | None]) -> None:
        """Keep one outbound call's outcome in `outbound_calls` (busy and unanswered calls included)."""
        await self._store.run(OUTCOME, dict(outcome))


def _change(url: str, sql: str, params: tuple[str, ...]) -> bool:
    with _connect(url) as connection:
        try:
            return connection.execute(sql, params).rowcount == 1
        except psycopg.Error as error:
            raise CallLogError("DATABASE_URL", f"cannot be written: {redact(str(error), url)}") from None


def add_number(url: str, number: str, source: str) -> bool:
    """`telephony-bridge dnc add` in a fleet: whether `number` was new to the list."""
    return _change(url, ADD, (number, datetime.now(UTC).isoformat(), source))


def remove_number(url: str, number: str) -> bool:
    return _change(url, REMOVE, (number,))


def list_numbers(url: str) -> list[dict[str, str]]:
    with _connect(url) as connection:
        try:
            rows = connection.execute(LIST).fetchall()
        except psycopg.Error as error:
            raise CallLogError("DATABASE_URL", f"cannot be read: {redact(str(error), url)}") from None
    return [{"number": row["number"], "added_at": row["added_at"], "source": row["source"]} for row in rows]
