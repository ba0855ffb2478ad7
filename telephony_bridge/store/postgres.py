"""The fleet's store on PostgreSQL: claims, the call log, the live-call registry and requests between instances.

psycopg 3 in async mode with its pool (docs/scaling.md says why). Every statement the routes await is one
round trip on a pooled connection; everything a call leaves behind (its registry row, its log record) goes
through a bounded queue and one writer task, so a slow or absent database never delays a frame, and a write
that finds the queue full is dropped and counted.

* Claims are rows keyed by (kind, key); `INSERT ... ON CONFLICT DO UPDATE ... WHERE expired` takes a key
  atomically, so two instances racing for one CallSid cannot both win, and an expired claim can be taken anew.
* Migrations run at start-up under a transaction-scoped advisory lock: of several instances starting at
  once, one applies them and the others find them applied.
* Each instance heartbeats its row in `instances`; any instance moves the live calls of an instance silent
  for `lost_after_s` into the call log with the outcome `lost`.
* An instance listens on its own channel; a request (`ask`) is a NOTIFY carrying the channel to reply on.
* Every instance also listens on `bridge_live`, where each one publishes its live calls' changes (the latest
  of each call, the transcript's tail) for the console's event stream, and any one publishes a lost call's end.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import re
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

import orjson
import psycopg
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from telephony_bridge.call.events import TokenUsage
from telephony_bridge.call.summary import CallSummary
from telephony_bridge.call_log import (
    CallQuery,
    CallRecord,
    LoggedCall,
    StreamErrorLine,
    TranscriptLine,
    UsageTotal,
    query_where,
    record_of,
)
from telephony_bridge.errors import CallLogError
from telephony_bridge.store.base import LiveCall, LiveHandler, Request, RequestHandler, StoreUnavailable
from telephony_bridge.store.schema import MIGRATION_LOCK, MIGRATIONS
from telephony_bridge.twilio.stream_errors import StreamError

log = logging.getLogger(__name__)

HEARTBEAT_S = 2.0
"""How often an instance says it is alive (and probes the database for `/readyz`)."""
LOST_AFTER_S = 30.0
"""An instance silent this long is dead: its calls are marked lost (a heartbeat missed 15 times)."""
MAX_QUEUED_WRITES = 10_000
"""Writes waiting for the database: about 2,500 calls' worth, minutes of a busy instance with the database away."""
CONNECTION_WAIT_S = 2.0
"""How long a route waits for a pooled connection before it takes the database for down."""
CLAIM_CLEANUP_AFTER_S = 3600.0
"""Expired claims, and instances silent (their calls long marked lost), are deleted this long after by any heartbeat."""
MAX_NOTIFY_BYTES = 7900
"""PostgreSQL refuses a NOTIFY payload of 8000 bytes or more."""
LIVE_CHANNEL = "bridge_live"
"""The channel every instance listens on for the fleet's live-call changes (the console's event stream)."""

FailureReason = Literal["database", "queue_full"]
_Write = Callable[[psycopg.AsyncConnection[Any]], Awaitable[None]]


def redact(text: str, url: str) -> str:
    """`text` with the connection string, and any password in it, left out: for log lines and errors."""
    text = text.replace(url, "<DATABASE_URL>")
    password = re.search(r"://[^:/@]*:([^@]*)@", url)
    return text.replace(password.group(1), "<password>") if password and password.group(1) else text


def channel_of(instance: str) -> str:
    """The NOTIFY channel an instance listens on: an identifier, whatever characters the instance id holds."""
    return "bridge_" + hashlib.sha256(instance.encode()).hexdigest()[:24]


@dataclass
class _Pending:
    reply: asyncio.Future[Request]


class PostgresStore:
    def __init__(
        self,
        url: str,
        instance: str,
        *,
        on_failure: Callable[[FailureReason], None] = lambda reason: None,
        heartbeat_s: float = HEARTBEAT_S,
        lost_after_s: float = LOST_AFTER_S,
        max_queued: int = MAX_QUEUED_WRITES,
        pool_size: int = 4,
    ) -> None:
        self.instance = instance
        self._url = url
        self._on_failure = on_failure
        self._heartbeat_s = heartbeat_s
        self._lost_after_s = lost_after_s
        self._pool = AsyncConnectionPool(
            url, min_size=1, max_size=pool_size, open=False, kwargs={"autocommit": True},
            check=AsyncConnectionPool.check_connection, reconnect_timeout=float("inf"), timeout=CONNECTION_WAIT_S,
        )
        self._writes: asyncio.Queue[_Write] = asyncio.Queue(maxsize=max_queued)
        self._tasks: list[asyncio.Task[None]] = []
        self._available = False
        self._handler: RequestHandler | None = None
        self._replies: dict[str, _Pending] = {}
        self._listening = asyncio.Event()
        self._live_handler: LiveHandler | None = None
        self._live_pending: dict[str, Request] = {}
        """The latest change of each call not yet published: a slow database skips states instead of queueing them."""
        self._live_wake = asyncio.Event()
        self.writes = 0
        """Statements run for the routes and the writer since start (the bench divides it by the calls)."""

    @property
    def available(self) -> bool:
        return self._available

    def on_request(self, handler: RequestHandler) -> None:
        self._handler = handler

    def on_live(self, handler: LiveHandler) -> None:
        self._live_handler = handler

    def publish_live(self, change: Request) -> None:
        """Tell the other instances a live call's change (`call_sid`, and `ended` once it has); never blocks."""
        self._live_pending[str(change["call_sid"])] = change
        self._live_wake.set()

    async def start(self, wait_s: float = 10.0) -> None:
        """Open the pool, migrate, register this instance and start the writer, the heartbeat and the listener.

        A database that does not answer within `wait_s` is not fatal: the instance starts unready
        (`/readyz` 503, calls refused) and the heartbeat keeps trying.
        """
        await self._pool.open(wait=False)
        try:
            await asyncio.wait_for(self._prepare(), wait_s)
        except (TimeoutError, psycopg.Error) as error:
            log.warning("the database is not reachable yet; new calls are refused until it is: %s", self._redact(error))
        self._tasks = [
            asyncio.create_task(self._write_forever(), name="store-writer"),
            asyncio.create_task(self._heartbeat_forever(), name="store-heartbeat"),
            asyncio.create_task(self._listen_forever(), name="store-listener"),
            asyncio.create_task(self._publish_live_forever(), name="store-live-publisher"),
        ]
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._listening.wait(), wait_s)

    async def close(self, timeout_s: float = 5.0) -> None:
        """Write what is queued (for up to `timeout_s`), leave the registry, and close the connections."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._writes.join(), timeout_s)
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        with contextlib.suppress(StoreUnavailable, TimeoutError):
            await asyncio.wait_for(self._execute("DELETE FROM instances WHERE instance = %s", (self.instance,)), 2.0)
        await self._pool.close()

    async def _prepare(self) -> None:
        async with self._pool.connection() as connection:
            await migrate(connection)
            await connection.execute(
                "INSERT INTO instances (instance, heartbeat_at) VALUES (%s, now()) "
                "ON CONFLICT (instance) DO UPDATE SET heartbeat_at = now()", (self.instance,),
            )
        self._available = True

    def _redact(self, error: BaseException) -> str:
        return redact(str(error), self._url)

    async def _execute(self, sql: str, params: tuple[Any, ...] | dict[str, Any] = ()) -> list[tuple[Any, ...]]:
        """One statement on a pooled connection; `StoreUnavailable` when the database does not answer."""
        try:
            async with self._pool.connection() as connection:
                cursor = await connection.execute(sql, params)
                self.writes += 1
                return await cursor.fetchall() if cursor.description else []
        except (psycopg.Error, PoolTimeout) as error:
            self._available = False
            raise StoreUnavailable(self._redact(error)) from None

    async def run(self, sql: str, params: tuple[Any, ...] | dict[str, Any] = ()) -> list[tuple[Any, ...]]:
        """One statement the routes await (the do-not-call list); `StoreUnavailable` when the database does not answer."""
        return await self._execute(sql, params)

    # Once-only claims

    async def claim(self, kind: str, key: str, value: str, ttl_s: float) -> str | None:
        rows = await self._execute(
            "INSERT INTO claims AS c (kind, key, value, instance, expires_at) "
            "VALUES (%s, %s, %s, %s, now() + make_interval(secs => %s)) "
            "ON CONFLICT (kind, key) DO UPDATE SET value = EXCLUDED.value, instance = EXCLUDED.instance, "
            "expires_at = EXCLUDED.expires_at WHERE c.expires_at < now() "
            "RETURNING true",
            (kind, key, value, self.instance, ttl_s),
        )
        if rows:
            return None
        return await self.claim_value(kind, key) or ""

    async def claim_value(self, kind: str, key: str) -> str | None:
        held = await self._execute("SELECT value FROM claims WHERE kind = %s AND key = %s", (kind, key))
        return str(held[0][0]) if held else None

    async def claimed(self, kind: str, key: str) -> bool:
        rows = await self._execute("SELECT 1 FROM claims WHERE kind = %s AND key = %s AND expires_at >= now()", (kind, key))
        return bool(rows)

    # The live-call registry

    def call_started(self, call_sid: str, number: str, caller: str) -> None:
        async def write(connection: psycopg.AsyncConnection[Any]) -> None:
            await connection.execute(
                "INSERT INTO live_calls (call_sid, instance, number, caller, started_at) VALUES (%s, %s, %s, %s, now()) "
                "ON CONFLICT (call_sid) DO UPDATE SET instance = EXCLUDED.instance",
                (call_sid, self.instance, number, caller),
            )
        self._queue(write, call_sid)

    def call_ended(self, summary: CallSummary) -> None:
        """The call leaves the registry and enters the call log, in one transaction."""
        record = record_of(summary, datetime.now(UTC))

        async def write(connection: psycopg.AsyncConnection[Any]) -> None:
            async with connection.transaction():
                await connection.execute(
                    "DELETE FROM live_calls WHERE call_sid = %s AND instance = %s", (record.call_sid, self.instance)
                )
                await _write_record(connection, record)
        self._queue(write, summary.call_sid)

    def stream_error(self, error: StreamError) -> None:
        at = datetime.now(UTC).isoformat()

        async def write(connection: psycopg.AsyncConnection[Any]) -> None:
            await connection.execute(
                "INSERT INTO stream_errors VALUES (%s, %s, %s, %s, %s)",
                (error.call_sid, at, error.stream_sid, error.code, error.detail),
            )
        self._queue(write, error.call_sid)

    async def owner_of(self, call_sid: str) -> str | None:
        rows = await self._execute("SELECT instance FROM live_calls WHERE call_sid = %s", (call_sid,))
        return str(rows[0][0]) if rows else None

    async def live_calls(self) -> list[LiveCall]:
        rows = await self._execute(
            "SELECT call_sid, instance, number, caller, extract(epoch FROM now() - started_at) "
            "FROM live_calls ORDER BY started_at"
        )
        return [LiveCall(str(r[0]), str(r[1]), str(r[2]), str(r[3]), float(r[4])) for r in rows]

    async def ended_outcome(self, call_sid: str) -> str | None:
        """How a call ended, from the call log (for `<Connect action>` landing on another instance than the call)."""
        rows = await self._execute("SELECT outcome FROM calls WHERE call_sid = %s", (call_sid,))
        return str(rows[0][0]) if rows else None

    def _queue(self, write: _Write, call_sid: str) -> None:
        try:
            self._writes.put_nowait(write)
        except asyncio.QueueFull:
            log.warning("call %s: a write to the database dropped: %d writes already wait", call_sid, self._writes.maxsize,
                        extra={"call_sid": call_sid})
            self._on_failure("queue_full")

    async def _write_forever(self) -> None:
        while True:
            write = await self._writes.get()
            try:
                async with self._pool.connection(timeout=self._heartbeat_s * 2) as connection:
                    await write(connection)
                    self.writes += 1
            except (psycopg.Error, PoolTimeout) as error:
                log.warning("a write to the database failed and is dropped: %s", self._redact(error))
                self._on_failure("database")
            finally:
                self._writes.task_done()

    # Heartbeat, lost calls

    async def _heartbeat_forever(self) -> None:
        while True:
            try:
                async with asyncio.timeout(self._heartbeat_s * 2):
                    if not self._available:
                        await self._prepare()
                    await self.beat()
                if not self._available:
                    log.info("the database is reachable again; taking new calls")
                self._available = True
            except (TimeoutError, psycopg.Error, PoolTimeout) as error:
                if self._available:
                    log.warning("the database does not answer; new calls are refused until it does: %s", self._redact(error))
                self._available = False
            await asyncio.sleep(self._heartbeat_s)

    async def beat(self) -> int:
        """Say this instance is alive, and move the calls of instances silent too long into the log as lost."""
        async with self._pool.connection() as connection:
            await connection.execute("UPDATE instances SET heartbeat_at = now() WHERE instance = %s", (self.instance,))
            cursor = await connection.execute(LOST_CALLS, (self._lost_after_s,))
            lost = await cursor.fetchall()
            await connection.execute(
                "DELETE FROM claims WHERE expires_at < now() - make_interval(secs => %s)", (CLAIM_CLEANUP_AFTER_S,)
            )
            await connection.execute(
                "DELETE FROM instances WHERE heartbeat_at < now() - make_interval(secs => %s)", (CLAIM_CLEANUP_AFTER_S,)
            )
        for (call_sid, instance) in lost:
            log.warning("call %s: marked lost, its instance %s stopped heartbeating", call_sid, instance,
                        extra={"call_sid": call_sid})
            ended = {"call_sid": call_sid, "ended": True, "outcome": "lost",
                     "end_reason": f"its bridge instance {instance} stopped"}
            self.publish_live(ended)
            if self._live_handler is not None:
                self._live_handler(ended)
        return len(lost)

    # Requests between instances

    async def ask(self, instance: str, op: str, args: Request, timeout_s: float) -> Request | None:
        request_id = secrets.token_hex(8)
        reply: asyncio.Future[Request] = asyncio.get_running_loop().create_future()
        self._replies[request_id] = _Pending(reply)
        message = {"id": request_id, "reply_to": channel_of(self.instance), "op": op, "args": args}
        try:
            await self._notify(channel_of(instance), message)
            return await asyncio.wait_for(reply, timeout_s)
        except TimeoutError:
            return None
        finally:
            self._replies.pop(request_id, None)

    async def _notify(self, channel: str, message: Request) -> None:
        payload = orjson.dumps(message).decode()
        if len(payload.encode()) > MAX_NOTIFY_BYTES:
            raise ValueError(f"a request of {len(payload)} bytes is over the {MAX_NOTIFY_BYTES} a NOTIFY carries")
        await self._execute("SELECT pg_notify(%s, %s)", (channel, payload))

    async def _publish_live_forever(self) -> None:
        while True:
            await self._live_wake.wait()
            self._live_wake.clear()
            changes, self._live_pending = self._live_pending, {}
            for change in changes.values():
                try:
                    await self._notify(LIVE_CHANNEL, {**change, "instance": self.instance})
                except (StoreUnavailable, ValueError) as error:
                    log.debug("a live call's change was not published: %s", error)

    async def _listen_forever(self) -> None:
        channel = channel_of(self.instance)
        while True:
            try:
                connection = await psycopg.AsyncConnection.connect(self._url, autocommit=True)
                async with connection:
                    await connection.execute(f"LISTEN {channel}")
                    await connection.execute(f"LISTEN {LIVE_CHANNEL}")
                    self._listening.set()
                    async for notice in connection.notifies():
                        if notice.channel == LIVE_CHANNEL:
                            self._received_live(notice.payload)
                        else:
                            self._received(notice.payload)
            except psycopg.Error as error:
                log.info("listening for other instances' requests again after: %s", self._redact(error))
            await asyncio.sleep(self._heartbeat_s / 2)

    def _received_live(self, payload: str) -> None:
        try:
            change = orjson.loads(payload)
        except orjson.JSONDecodeError:
            return
        if self._live_handler is not None and isinstance(change, dict) and change.get("instance") != self.instance:
            self._live_handler(change)

    def _received(self, payload: str) -> None:
        try:
            message = orjson.loads(payload)
        except orjson.JSONDecodeError:
            return
        if "reply" in message:
            pending = self._replies.get(str(message.get("id")))
            if pending is not None and not pending.reply.done():
                pending.reply.set_result(message["reply"])
            return
        task = asyncio.create_task(self._answer(message))
        self._tasks.append(task)
        task.add_done_callback(self._tasks.remove)

    async def _answer(self, message: Request) -> None:
        if self._handler is None:
            return
        try:
            reply = await self._handler(str(message.get("op")), dict(message.get("args") or {}))
        except Exception as error:  # a reply must go back whatever went wrong here, or the asker waits out its timeout
            log.warning("a request from another instance failed: %s", error)
            reply = {"error": str(error)}
        with contextlib.suppress(StoreUnavailable, ValueError):
            await self._notify(str(message.get("reply_to")), {"id": message.get("id"), "reply": reply})


LOST_CALLS = """
WITH dead AS (
    DELETE FROM live_calls l
    WHERE NOT EXISTS (SELECT 1 FROM instances i
                      WHERE i.instance = l.instance AND i.heartbeat_at >= now() - make_interval(secs => %s))
    RETURNING l.*
), logged AS (
    INSERT INTO calls (call_sid, from_number, to_number, started_at, ended_at, duration_s, outcome, end_reason,
                       barge_ins, reconnects, model, dialect)
    SELECT call_sid, caller, number, to_char(started_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"+00:00"'),
           to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"+00:00"'),
           extract(epoch FROM now() - started_at), 'lost', 'its bridge instance ' || instance || ' stopped', 0, 0, '', ''
    FROM dead
    ON CONFLICT (call_sid) DO NOTHING
)
SELECT call_sid, instance FROM dead
"""
"""Calls whose instance has not heartbeaten in time (or has left the registry with calls still in it): out of the
registry, into the call log as `lost`."""


async def migrate(connection: psycopg.AsyncConnection[Any]) -> int:
    """Bring the schema up to date under the advisory lock; the version it is at."""
    async with connection.transaction():
        await connection.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
        await connection.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
        cursor = await connection.execute("SELECT version FROM schema_version")
        row = await cursor.fetchone()
        version = int(row[0]) if row else 0
        if version > len(MIGRATIONS):
            newer = f"schema version {version} is newer than this bridge's {len(MIGRATIONS)}; upgrade it"
            raise CallLogError("DATABASE_URL", newer)
        for script in MIGRATIONS[version:]:
            await connection.execute(script)
        if row is None:
            await connection.execute("INSERT INTO schema_version VALUES (%s)", (len(MIGRATIONS),))
        else:
            await connection.execute("UPDATE schema_version SET version = %s", (len(MIGRATIONS),))
    return len(MIGRATIONS)


_CALL_COLUMNS = (
    "call_sid", "from_number", "to_number", "started_at", "ended_at", "duration_s", "outcome", "end_reason",
    "barge_ins", "reconnects", "model", "dialect", "direction", "transfer_target", "transfer_connected",
    "profile_in_force", "audio_in_tokens", "text_in_tokens", "cached_in_tokens", "audio_out_tokens", "text_out_tokens",
    "cached_audio_in_tokens", "cost", "amd_result",
)


async def _write_record(connection: psycopg.AsyncConnection[Any], record: CallRecord) -> None:
    """One call, replacing an earlier row of the same CallSid (a restarted stream, or a call marked lost)."""
    columns = ", ".join(_CALL_COLUMNS)
    updates = ", ".join(f"{column} = EXCLUDED.{column}" for column in _CALL_COLUMNS[1:])
    await connection.execute(
        f"INSERT INTO calls ({columns}) VALUES ({', '.join(['%s'] * len(_CALL_COLUMNS))}) "
        f"ON CONFLICT (call_sid) DO UPDATE SET {updates}",
        (
            record.call_sid, record.from_number, record.to_number, record.started_at.isoformat(),
            record.ended_at.isoformat(), record.duration_s, record.outcome, record.end_reason,
            record.barge_ins, record.reconnects, record.model, record.dialect, record.direction,
            record.transfer_target, record.transfer_connected, record.profile_in_force,
            record.usage.audio_in, record.usage.text_in, record.usage.cached_in, record.usage.audio_out,
            record.usage.text_out, record.usage.cached_audio_in, record.cost, record.amd_result,
        ),
    )
    await connection.execute("DELETE FROM transcript WHERE call_sid = %s", (record.call_sid,))
    async with connection.cursor() as cursor:
        await cursor.executemany(
            "INSERT INTO transcript (call_sid, position, speaker, text, at_s) VALUES (%s, %s, %s, %s, %s)",
            [(record.call_sid, position, line.speaker, line.text, line.at_s) for position, line in enumerate(record.transcript)],
        )


# Reading the call log (the `calls` command and the admin API), synchronous like the SQLite readers.


def _connect(url: str) -> psycopg.Connection[dict[str, Any]]:
    try:
        return psycopg.connect(url, row_factory=dict_row, connect_timeout=5)
    except psycopg.Error as error:
        raise CallLogError("DATABASE_URL", f"cannot be read: {redact(str(error), url)}") from None


def _record(row: dict[str, Any], transcript: tuple[TranscriptLine, ...] = (),
            errors: tuple[StreamErrorLine, ...] = ()) -> CallRecord:
    connected = row["transfer_connected"]
    return CallRecord(
        call_sid=row["call_sid"], from_number=row["from_number"], to_number=row["to_number"],
        started_at=datetime.fromisoformat(row["started_at"]), ended_at=datetime.fromisoformat(row["ended_at"]),
        duration_s=row["duration_s"], outcome=row["outcome"], end_reason=row["end_reason"],
        barge_ins=row["barge_ins"], reconnects=row["reconnects"], model=row["model"], dialect=row["dialect"],
        transcript=transcript, direction=row["direction"], stream_errors=errors,
        transfer_target=row["transfer_target"], transfer_connected=None if connected is None else bool(connected),
        profile_in_force=row["profile_in_force"], cost=row["cost"], transcript_purged=row["transcript_purged"],
        usage=TokenUsage(row["audio_in_tokens"], row["text_in_tokens"], row["cached_in_tokens"], row["audio_out_tokens"],
                         row["text_out_tokens"], row["cached_audio_in_tokens"]),
        amd_result=row["amd_result"],
    )


def find_call(url: str, call_sid: str) -> CallRecord | None:
    """One call with its transcript and stream errors; `None` if the log has no such call."""
    with _connect(url) as connection:
        try:
            row = connection.execute("SELECT * FROM calls WHERE call_sid = %s", (call_sid,)).fetchone()
            lines = connection.execute(
                "SELECT speaker, text, at_s FROM transcript WHERE call_sid = %s ORDER BY position", (call_sid,)
            ).fetchall()
            errors = connection.execute(
                "SELECT at, code, detail FROM stream_errors WHERE call_sid = %s ORDER BY at", (call_sid,)
            ).fetchall()
        except psycopg.Error as error:
            raise CallLogError("DATABASE_URL", f"cannot be read: {redact(str(error), url)}") from None
    if row is None:
        return None
    return _record(
        row, tuple(TranscriptLine(line["speaker"], line["text"], line["at_s"]) for line in lines),
        tuple(StreamErrorLine(datetime.fromisoformat(e["at"]), e["code"], e["detail"]) for e in errors),
    )


def search_calls(url: str, query: CallQuery) -> tuple[list[CallRecord], tuple[str, str] | None]:
    """`call_log.search_calls` over PostgreSQL: the same filters, order and paging key."""
    where, values = query_where(query, "%s", "ILIKE")
    with _connect(url) as connection:
        try:
            rows = connection.execute(
                f"SELECT * FROM calls {where} ORDER BY started_at DESC, call_sid DESC LIMIT %s",
                (*values, query.limit + 1),
            ).fetchall()
        except psycopg.Error as error:
            raise CallLogError("DATABASE_URL", f"cannot be read: {redact(str(error), url)}") from None
    records = [_record(row) for row in rows[: query.limit]]
    more = len(rows) > query.limit
    return records, ((rows[query.limit - 1]["started_at"], rows[query.limit - 1]["call_sid"]) if more else None)


def _read(url: str, sql: str, params: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
    with _connect(url) as connection:
        try:
            return connection.execute(sql, params).fetchall()
        except psycopg.Error as error:
            raise CallLogError("DATABASE_URL", f"cannot be read: {redact(str(error), url)}") from None


def usage_totals(url: str) -> list[UsageTotal]:
    """`call_log.usage_totals` over PostgreSQL: every number's usage, by model."""
    rows = _read(
        url,
        "SELECT to_number, model, count(*) AS calls, sum(duration_s) AS seconds, sum(audio_in_tokens) AS audio_in, "
        "sum(text_in_tokens) AS text_in, sum(cached_in_tokens) AS cached_in, sum(audio_out_tokens) AS audio_out, "
        "sum(text_out_tokens) AS text_out, sum(cached_audio_in_tokens) AS cached_audio_in, sum(cost) AS cost "
        "FROM calls GROUP BY to_number, model ORDER BY to_number, model",
    )
    return [
        UsageTotal(row["to_number"], row["model"], int(row["calls"]), float(row["seconds"]),
                   TokenUsage(int(row["audio_in"]), int(row["text_in"]), int(row["cached_in"]), int(row["audio_out"]),
                              int(row["text_out"]), int(row["cached_audio_in"])),
                   None if row["cost"] is None else float(row["cost"]))
        for row in rows
    ]


def logged_calls(url: str) -> list[LoggedCall]:
    """`call_log.logged_calls` over PostgreSQL: what retention needs of every logged call, oldest first."""
    rows = _read(url, "SELECT call_sid, to_number, ended_at, transcript_purged FROM calls ORDER BY ended_at")
    return [LoggedCall(row["call_sid"], row["to_number"], datetime.fromisoformat(row["ended_at"]), not row["transcript_purged"])
            for row in rows]


def delete_transcript(url: str, call_sid: str) -> int:
    """Delete one call's transcript, keeping its row marked purged; how many lines went."""
    with _connect(url) as connection:
        try:
            with connection.transaction():
                deleted = connection.execute("DELETE FROM transcript WHERE call_sid = %s", (call_sid,)).rowcount
                connection.execute("UPDATE calls SET transcript_purged = true WHERE call_sid = %s", (call_sid,))
        except psycopg.Error as error:
            raise CallLogError("DATABASE_URL", f"cannot be written: {redact(str(error), url)}") from None
    return deleted


def erase_call(url: str, call_sid: str) -> tuple[bool, int, int]:
    """Everything the fleet's log holds of one call deleted: whether its row existed, transcript lines, stream errors."""
    with _connect(url) as connection:
        try:
            with connection.transaction():
                row = connection.execute("DELETE FROM calls WHERE call_sid = %s", (call_sid,)).rowcount
                lines = connection.execute("DELETE FROM transcript WHERE call_sid = %s", (call_sid,)).rowcount
                errors = connection.execute("DELETE FROM stream_errors WHERE call_sid = %s", (call_sid,)).rowcount
        except psycopg.Error as error:
            raise CallLogError("DATABASE_URL", f"cannot be written: {redact(str(error), url)}") from None
    return bool(row), lines, errors
