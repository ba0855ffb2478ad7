"""The call log: one SQLite row per call, with its transcript, for operators to look calls up.

Written from one worker thread fed by a bounded queue: a call's end only queues its record, so no
disk write ever runs on the event loop that carries every live call's audio. When the database
cannot take a record (locked by another process past the busy timeout, a full disk, an unwritable
path) or the queue is full, the record is dropped with a warning and counted
(`telephony_bridge_call_log_failures_total`); the calls themselves never notice.

The schema is versioned with `PRAGMA user_version`: `MIGRATIONS` are applied in order, each once and
in its own transaction, so a file an older bridge wrote is brought up to date on start, and one a
newer bridge wrote is refused rather than misread. The file is in WAL mode, so `telephony-bridge
calls` can read it while the bridge writes.

Callers' numbers are stored in full: this is where an operator looks up who called, and it holds
transcripts, which say far more than a number. So the bridge creates the file owner-only (0600),
whatever the umask, before SQLite opens it; SQLite gives the `-wal` and `-shm` files the mode of the
database. Folders it creates on the way are 0700; one that exists already keeps its mode.
"""

from __future__ import annotations

import logging
import os
import queue
import sqlite3
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

from telephony_bridge.call.events import TokenUsage
from telephony_bridge.call.summary import CallSummary
from telephony_bridge.errors import CallLogError
from telephony_bridge.twilio.stream_errors import StreamError

log = logging.getLogger(__name__)

MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE calls (
        call_sid TEXT PRIMARY KEY,
        from_number TEXT NOT NULL,
        to_number TEXT NOT NULL,
        started_at TEXT NOT NULL,
        ended_at TEXT NOT NULL,
        duration_s REAL NOT NULL,
        outcome TEXT NOT NULL,
        end_reason TEXT NOT NULL,
        barge_ins INTEGER NOT NULL,
        reconnects INTEGER NOT NULL,
        model TEXT NOT NULL,
        dialect TEXT NOT NULL
    );
    CREATE INDEX calls_by_start ON calls (started_at);
    CREATE TABLE transcript (
        call_sid TEXT NOT NULL,
        position INTEGER NOT NULL,
        speaker TEXT NOT NULL,
        text TEXT NOT NULL,
        PRIMARY KEY (call_sid, position)
    );
    """,
    """
    ALTER TABLE calls ADD COLUMN direction TEXT NOT NULL DEFAULT 'inbound';
    CREATE INDEX calls_by_number ON calls (to_number, started_at);
    """,
    """
    CREATE TABLE stream_errors (
        call_sid TEXT NOT NULL,
        at TEXT NOT NULL,
        stream_sid TEXT NOT NULL,
        code TEXT NOT NULL,
        detail TEXT NOT NULL
    );
    CREATE INDEX stream_errors_by_call ON stream_errors (call_sid, at);
    """,
    """
    ALTER TABLE calls ADD COLUMN transfer_target TEXT;
    ALTER TABLE calls ADD COLUMN transfer_connected INTEGER;
    """,
    """
    ALTER TABLE transcript ADD COLUMN at_s REAL;
    """,
    """
    ALTER TABLE calls ADD COLUMN profile_in_force TEXT NOT NULL DEFAULT 'always';
    ALTER TABLE calls ADD COLUMN audio_in_tokens INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE calls ADD COLUMN text_in_tokens INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE calls ADD COLUMN cached_in_tokens INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE calls ADD COLUMN audio_out_tokens INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE calls ADD COLUMN text_out_tokens INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE calls ADD COLUMN cached_audio_in_tokens INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE calls ADD COLUMN cost REAL;
    ALTER TABLE calls ADD COLUMN transcript_purged INTEGER NOT NULL DEFAULT 0;
    """,
    """
    ALTER TABLE calls ADD COLUMN amd_result TEXT;
    CREATE TABLE do_not_call (
        number TEXT PRIMARY KEY,
        added_at TEXT NOT NULL,
        source TEXT NOT NULL
    );
    CREATE TABLE outbound_calls (
        outbound_id TEXT PRIMARY KEY,
        call_sid TEXT,
        from_number TEXT NOT NULL,
        to_number TEXT NOT NULL,
        campaign_row TEXT,
        ended_at TEXT NOT NULL,
        outcome TEXT NOT NULL,
        amd_result TEXT
    );
    CREATE INDEX outbound_calls_by_sid ON outbound_calls (call_sid);
    """,
    """
    CREATE TABLE campaigns (
        campaign_id TEXT PRIMARY KEY,
        created_at TEXT NOT NULL,
        state TEXT NOT NULL,
        from_number TEXT NOT NULL,
        concurrency INTEGER NOT NULL,
        retries INTEGER NOT NULL,
        retry_delay_s REAL NOT NULL,
        calling_window TEXT,
        timezone TEXT NOT NULL
    );
    CREATE TABLE campaign_rows (
        campaign_id TEXT NOT NULL REFERENCES campaigns (campaign_id),
        position INTEGER NOT NULL,
        to_number TEXT NOT NULL,
        context TEXT NOT NULL,
        timezone TEXT,
        state TEXT NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        next_attempt_at TEXT,
        outcome TEXT,
        detail TEXT NOT NULL DEFAULT '',
        call_sid TEXT,
        amd_result TEXT,
        updated_at TEXT NOT NULL,
        PRIMARY KEY (campaign_id, position)
    );
    CREATE INDEX campaign_rows_by_state ON campaign_rows (state, campaign_id);
    """,
)
"""Version N of the schema is the first N scripts; append, never edit one a bridge has shipped."""

BUSY_TIMEOUT_S = 2.0
"""How long a write waits for a lock held by another process (a reader in rollback mode, a backup)."""
MAX_QUEUED_RECORDS = 1000
"""Calls waiting to be written; only a database stalled for minutes at a busy bridge fills this."""

FailureReason = Literal["database", "queue_full"]


@dataclass(frozen=True)
class TranscriptLine:
    speaker: str
    """"caller", "model" or "tool"."""
    text: str
    at_s: float | None = None
    """Seconds from the call's answer to the line being complete; `None` in calls logged before schema 5."""


@dataclass(frozen=True)
class StreamErrorLine:
    """A stream error Twilio reported for a call (its `<Stream statusCallback>`); `at` is UTC."""

    at: datetime
    code: str
    detail: str


@dataclass(frozen=True)
class CallRecord:
    """One call as the call log keeps it; times are UTC."""

    call_sid: str
    from_number: str
    to_number: str
    started_at: datetime
    ended_at: datetime
    duration_s: float
    outcome: str
    end_reason: str
    barge_ins: int
    reconnects: int
    model: str
    dialect: str
    transcript: tuple[TranscriptLine, ...] = ()
    direction: str = "inbound"
    """"inbound", or "outbound" for a call the bridge placed (then `from_number` is the bridge's number)."""
    stream_errors: tuple[StreamErrorLine, ...] = ()
    """Read back by `find_call`; written apart, when Twilio reports them (before or after the call's end)."""
    transfer_target: str | None = None
    """The configured name the call was last transferred to; `None` if it never was."""
    transfer_connected: bool | None = None
    """Whether that transfer connected (busy or unanswered brought the caller back); `None` if there was none."""
    profile_in_force: str = "always"
    """Which of the number's profiles the call kept: `always` (no hours), `business_hours` or `after_hours`."""
    usage: TokenUsage = TokenUsage()
    cost: float | None = None
    """Estimated from the operator's `[prices]`; `None` without prices for the model."""
    transcript_purged: bool = False
    """The transcript was deleted when the number's `retention_days.transcripts` ran out."""
    amd_result: str | None = None
    """An outbound call's answering-machine detection result (Twilio's `AnsweredBy`)."""


def record_of(summary: CallSummary, ended_at: datetime) -> CallRecord:
    """What the call log keeps of an ended call; its start is its end less its duration on the call's clock."""
    outbound = summary.direction == "outbound"
    return CallRecord(
        call_sid=summary.call_sid,
        from_number=summary.called_number if outbound else summary.caller_number,
        to_number=summary.caller_number if outbound else summary.called_number,
        started_at=ended_at - timedelta(seconds=summary.duration_s),
        ended_at=ended_at,
        duration_s=summary.duration_s,
        outcome=summary.outcome or "unknown",
        end_reason=summary.end_reason,
        barge_ins=summary.counters.barge_ins,
        reconnects=summary.counters.reconnects,
        model=summary.model,
        dialect=summary.dialect,
        transcript=tuple(TranscriptLine(turn.speaker, turn.text, at_s) for turn, at_s in summary.timed_transcript()),
        transfer_target=summary.transfer_target,
        transfer_connected=summary.transfer_connected,
        profile_in_force=summary.profile_in_force,
        usage=summary.usage,
        cost=summary.cost,
        direction=summary.direction,
        amd_result=summary.amd_result,
    )


def _create_owner_only(path: Path) -> None:
    """Create the missing folders (0700) and an empty database file (0600); an existing file is left as it is."""
    missing = [folder for folder in (path.parent, *path.parent.parents) if not folder.exists()]
    for folder in reversed(missing):
        folder.mkdir(mode=0o700, exist_ok=True)
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except FileExistsError:
        if path.stat().st_mode & 0o077:
            log.warning("the call log %s can be read by other users than its owner: chmod 600 it", path)


def open_for_writing(path: Path, busy_timeout_s: float = BUSY_TIMEOUT_S) -> sqlite3.Connection:
    """Open (or create, owner-only) the call log and bring its schema up to date."""
    try:
        _create_owner_only(path)
    except OSError as error:
        raise sqlite3.OperationalError(f"cannot create {path}: {error.strerror}") from None
    connection = sqlite3.connect(path, timeout=busy_timeout_s)
    try:
        connection.execute("PRAGMA journal_mode=WAL")
        _migrate(connection, str(path))
    except (sqlite3.Error, CallLogError):
        connection.close()
        raise
    return connection


def _migrate(connection: sqlite3.Connection, source: str) -> None:
    version = _schema_version(connection, source)
    for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
        try:
            connection.executescript(f"BEGIN;\n{script}\nPRAGMA user_version = {number};\nCOMMIT;")
        except sqlite3.Error:
            if connection.in_transaction:
                connection.rollback()
            raise


def _schema_version(connection: sqlite3.Connection, source: str) -> int:
    version = connection.execute("PRAGMA user_version").fetchone()[0]
    if version > len(MIGRATIONS):
        raise CallLogError(source, f"schema version {version} is newer than this bridge's {len(MIGRATIONS)}; upgrade it")
    return version


_CALL_COLUMNS = (
    "call_sid", "from_number", "to_number", "started_at", "ended_at", "duration_s", "outcome", "end_reason",
    "barge_ins", "reconnects", "model", "dialect", "direction", "transfer_target", "transfer_connected",
    "profile_in_force", "audio_in_tokens", "text_in_tokens", "cached_in_tokens", "audio_out_tokens", "text_out_tokens",
    "cached_audio_in_tokens", "cost", "amd_result",
)


def _write(connection: sqlite3.Connection, record: CallRecord) -> None:
    """Store one call in one transaction; a call written again (a restarted stream) replaces the first."""
    with connection:
        connection.execute(
            f"INSERT OR REPLACE INTO calls ({', '.join(_CALL_COLUMNS)}) VALUES ({', '.join('?' * len(_CALL_COLUMNS))})",
            (
                record.call_sid, record.from_number, record.to_number, record.started_at.isoformat(),
                record.ended_at.isoformat(), record.duration_s, record.outcome, record.end_reason,
                record.barge_ins, record.reconnects, record.model, record.dialect, record.direction,
                record.transfer_target, record.transfer_connected, record.profile_in_force,
                record.usage.audio_in, record.usage.text_in, record.usage.cached_in, record.usage.audio_out,
                record.usage.text_out, record.usage.cached_audio_in, record.cost, record.amd_result,
            ),
        )
        connection.execute("DELETE FROM transcript WHERE call_sid = ?", (record.call_sid,))
        connection.executemany(
            "INSERT INTO transcript (call_sid, position, speaker, text, at_s) VALUES (?, ?, ?, ?, ?)",
            [(record.call_sid, position, line.speaker, line.text, line.at_s) for position, line in enumerate(record.transcript)],
        )


def _write_stream_error(connection: sqlite3.Connection, at: datetime, error: StreamError) -> None:
    with connection:
        connection.execute(
            "INSERT INTO stream_errors VALUES (?, ?, ?, ?, ?)",
            (error.call_sid, at.isoformat(), error.stream_sid, error.code, error.detail),
        )


_Entry = CallRecord | tuple[datetime, StreamError]


class CallLog:
    """Writes ended calls (and stream errors) to the database at `path` from its own thread; `start()` creates the schema."""

    def __init__(
        self,
        path: Path,
        *,
        on_failure: Callable[[FailureReason], None] = lambda reason: None,
        busy_timeout_s: float = BUSY_TIMEOUT_S,
        max_queued: int = MAX_QUEUED_RECORDS,
    ) -> None:
        self.path = path
        self._on_failure = on_failure
        self._busy_timeout_s = busy_timeout_s
        self._queue: queue.Queue[_Entry | None] = queue.Queue(maxsize=max_queued)
        self._thread = threading.Thread(target=self._run, name="call-log", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def call_ended(self, summary: CallSummary) -> None:
        """Queue an ended call for writing (part of the switchboard's `on_call_end` hook); never blocks."""
        self.add(record_of(summary, datetime.now(UTC)))

    def stream_error(self, error: StreamError) -> None:
        """Queue a stream error Twilio reported; never blocks."""
        self.add((datetime.now(UTC), error))

    def add(self, record: _Entry) -> None:
        try:
            self._queue.put_nowait(record)
        except queue.Full:
            call_sid = _call_sid(record)
            log.warning("call %s: not written to the call log: %d calls already wait for %s",
                        call_sid, self._queue.maxsize, self.path, extra={"call_sid": call_sid})
            self._on_failure("queue_full")

    def close(self, timeout_s: float = 5.0) -> None:
        """Write what is queued (for up to `timeout_s`), then stop the thread."""
        try:
            self._queue.put(None, timeout=timeout_s)
        except queue.Full:
            return
        self._thread.join(timeout_s)

    def _run(self) -> None:
        connection: sqlite3.Connection | None = None
        try:
            connection = open_for_writing(self.path, self._busy_timeout_s)
        except (sqlite3.Error, CallLogError) as error:
            log.warning("the call log %s cannot be opened; calls are not logged until it can: %s", self.path, error)
        while (record := self._queue.get()) is not None:
            try:
                connection = connection or open_for_writing(self.path, self._busy_timeout_s)
                if isinstance(record, CallRecord):
                    _write(connection, record)
                else:
                    _write_stream_error(connection, *record)
            except (sqlite3.Error, CallLogError) as error:
                call_sid = _call_sid(record)
                log.warning("call %s: not written to the call log %s: %s", call_sid, self.path, error,
                            extra={"call_sid": call_sid})
                self._on_failure("database")
        if connection is not None:
            connection.close()


def _call_sid(entry: _Entry) -> str:
    return entry.call_sid if isinstance(entry, CallRecord) else entry[1].call_sid


def _open_for_reading(path: Path) -> sqlite3.Connection:
    if not path.is_file():
        raise CallLogError(str(path), "no call log here (the bridge creates it when it starts; check [call_log] path)")
    try:
        connection = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=BUSY_TIMEOUT_S)
        if _schema_version(connection, str(path)) == 0:
            connection.close()
            raise CallLogError(str(path), "not a call log (no schema)")
    except sqlite3.Error as error:
        raise CallLogError(str(path), f"cannot be read: {error}") from None
    connection.row_factory = sqlite3.Row
    return connection


def _record(
    row: sqlite3.Row, transcript: tuple[TranscriptLine, ...] = (), stream_errors: tuple[StreamErrorLine, ...] = ()
) -> CallRecord:
    columns = row.keys()
    connected = row["transfer_connected"] if "transfer_connected" in columns else None
    return CallRecord(
        call_sid=row["call_sid"], from_number=row["from_number"], to_number=row["to_number"],
        started_at=datetime.fromisoformat(row["started_at"]), ended_at=datetime.fromisoformat(row["ended_at"]),
        duration_s=row["duration_s"], outcome=row["outcome"], end_reason=row["end_reason"],
        barge_ins=row["barge_ins"], reconnects=row["reconnects"], model=row["model"], dialect=row["dialect"],
        transcript=transcript, direction=row["direction"] if "direction" in columns else "inbound",
        stream_errors=stream_errors,
        transfer_target=row["transfer_target"] if "transfer_target" in columns else None,
        transfer_connected=None if connected is None else bool(connected),
        **(_policy_fields(row) if "profile_in_force" in columns else {}),
        amd_result=row["amd_result"] if "amd_result" in columns else None,
    )


def _policy_fields(row: sqlite3.Row) -> dict[str, Any]:
    return {
        "profile_in_force": row["profile_in_force"], "cost": row["cost"], "transcript_purged": bool(row["transcript_purged"]),
        "usage": TokenUsage(row["audio_in_tokens"], row["text_in_tokens"], row["cached_in_tokens"], row["audio_out_tokens"],
                            row["text_out_tokens"], row["cached_audio_in_tokens"]),
    }


def recent_calls(path: Path, limit: int = 20) -> list[CallRecord]:
    """The latest `limit` calls, newest first, without their transcripts."""
    connection = _open_for_reading(path)
    try:
        rows = connection.execute("SELECT * FROM calls ORDER BY started_at DESC LIMIT ?", (limit,)).fetchall()
    except sqlite3.Error as error:
        raise CallLogError(str(path), f"cannot be read: {error}") from None
    finally:
        connection.close()
    return [_record(row) for row in rows]


def find_call(path: Path, call_sid: str) -> CallRecord | None:
    """One call with its transcript; `None` if the log has no such call."""
    connection = _open_for_reading(path)
    try:
        row = connection.execute("SELECT * FROM calls WHERE call_sid = ?", (call_sid,)).fetchone()
        lines = connection.execute(
            "SELECT * FROM transcript WHERE call_sid = ? ORDER BY position", (call_sid,)
        ).fetchall()
        errors = connection.execute(
            "SELECT at, code, detail FROM stream_errors WHERE call_sid = ? ORDER BY at", (call_sid,)
        ).fetchall() if _schema_version(connection, str(path)) >= 3 else []
    except sqlite3.Error as error:
        raise CallLogError(str(path), f"cannot be read: {error}") from None
    finally:
        connection.close()
    if row is None:
        return None
    return _record(
        row, tuple(TranscriptLine(line["speaker"], line["text"], _at_s(line)) for line in lines),
        tuple(StreamErrorLine(datetime.fromisoformat(e["at"]), e["code"], e["detail"]) for e in errors),
    )


@dataclass(frozen=True)
class CallQuery:
    """A page of the call history, newest first; every filter is optional and they all apply together."""

    number: str | None = None
    """The number called."""
    since: datetime | None = None
    """Calls started at or after this (UTC)."""
    until: datetime | None = None
    """Calls started before this (UTC)."""
    outcome: str | None = None
    direction: str | None = None
    text: str | None = None
    """Words anywhere in the transcript, either side (case-insensitive for ASCII)."""
    limit: int = 50
    after: tuple[str, str] | None = None
    """The (started_at, call_sid) of the last call of the previous page: paging by key, so calls ended
    between two pages neither repeat nor slip through the way an offset would."""


def query_where(query: CallQuery, mark: str, like: str) -> tuple[str, list[object]]:
    """`query`'s filters and paging key as a WHERE clause (empty without any) and its values in order: `mark` is the
    driver's placeholder, `like` its case-insensitive match (SQLite's LIKE, PostgreSQL's ILIKE)."""
    conditions: list[str] = []
    values: list[object] = []
    for column, value in (("to_number", query.number), ("outcome", query.outcome), ("direction", query.direction)):
        if value is not None:
            conditions.append(f"{column} = {mark}")
            values.append(value)
    if query.since is not None:
        conditions.append(f"started_at >= {mark}")
        values.append(query.since.astimezone(UTC).isoformat())
    if query.until is not None:
        conditions.append(f"started_at < {mark}")
        values.append(query.until.astimezone(UTC).isoformat())
    if query.text:
        escaped = query.text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        conditions.append(f"call_sid IN (SELECT call_sid FROM transcript WHERE text {like} {mark} ESCAPE '\\')")
        values.append(f"%{escaped}%")
    if query.after is not None:
        conditions.append(f"(started_at, call_sid) < ({mark}, {mark})")
        values.extend(query.after)
    return (f"WHERE {' AND '.join(conditions)}" if conditions else ""), values


def search_calls(path: Path, query: CallQuery) -> tuple[list[CallRecord], tuple[str, str] | None]:
    """A page of calls matching `query`, without transcripts, and the key of the next page (`None`: the last page)."""
    where, values = query_where(query, "?", "LIKE")
    connection = _open_for_reading(path)
    try:
        rows = connection.execute(
            f"SELECT * FROM calls {where} ORDER BY started_at DESC, call_sid DESC LIMIT ?", (*values, query.limit + 1)
        ).fetchall()
    except sqlite3.Error as error:
        raise CallLogError(str(path), f"cannot be read: {error}") from None
    finally:
        connection.close()
    records = [_record(row) for row in rows[: query.limit]]
    more = len(rows) > query.limit
    return records, ((rows[query.limit - 1]["started_at"], rows[query.limit - 1]["call_sid"]) if more else None)


def _duration(seconds: float) -> str:
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes}m {rest:02d}s" if minutes else f"{seconds:.1f}s"


def calls_table(records: list[CallRecord]) -> str:
    """`telephony-bridge calls`: one line per call, aligned, newest first."""
    header = ("STARTED (UTC)", "CALL SID", "FROM", "TO", "DURATION", "OUTCOME", "BARGE-INS", "RECONNECTS")
    rows = [
        (
            record.started_at.strftime("%Y-%m-%d %H:%M:%S"), record.call_sid, record.from_number or "-",
            record.to_number, _duration(record.duration_s), record.outcome, str(record.barge_ins), str(record.reconnects),
        )
        for record in records
    ]
    widths = [max(len(row[column]) for row in (header, *rows)) for column in range(len(header))]
    right_aligned = {4, 6, 7}
    lines = [
        "  ".join(cell.rjust(width) if column in right_aligned else cell.ljust(width)
                  for column, (cell, width) in enumerate(zip(row, widths, strict=True))).rstrip()
        for row in (header, *rows)
    ]
    return "\n".join(lines)


def _transfer(record: CallRecord) -> str:
    if record.transfer_target is None:
        return "-"
    return f"{record.transfer_target} ({'connected' if record.transfer_connected else 'did not connect'})"


def call_details(record: CallRecord) -> str:
    """`telephony-bridge calls show SID`: the call's row, then what each side said."""
    fields = [
        ("from", record.from_number or "-"),
        ("to", record.to_number),
        ("started", f"{record.started_at:%Y-%m-%d %H:%M:%S} UTC"),
        ("ended", f"{record.ended_at:%Y-%m-%d %H:%M:%S} UTC"),
        ("duration", _duration(record.duration_s)),
        ("outcome", f"{record.outcome} ({record.end_reason})" if record.end_reason else record.outcome),
        ("barge-ins", str(record.barge_ins)),
        ("reconnects", str(record.reconnects)),
        ("transfer", _transfer(record)),
        ("direction", record.direction + (f" (answered by: {record.amd_result})" if record.amd_result else "")),
        ("model", f"{record.model or '-'} ({record.dialect} dialect)"),
        ("profile", record.profile_in_force),
        ("tokens", _tokens(record.usage)),
        ("cost", "-" if record.cost is None else f"{record.cost:.4f} (estimated)"),
    ]
    lines = [f"Call {record.call_sid}"] + [f"  {name:<11}{value}" for name, value in fields] + ["", "Transcript"]
    if record.transcript_purged:
        lines.append("  (deleted: the number's retention_days.transcripts ran out)")
    elif not record.transcript:
        lines.append("  (none: nothing was said, or the call ended first)")
    speaker_width = max((len(line.speaker) for line in record.transcript), default=0) + 1
    lines += [
        f"  {_said_at(line.at_s)}{line.speaker + ':':<{speaker_width}} {line.text}" for line in record.transcript
    ]
    if record.stream_errors:
        lines += ["", "Stream errors (reported by Twilio)"]
        lines += [f"  {error.at:%H:%M:%S} {error.code}: {error.detail}" for error in record.stream_errors]
    return "\n".join(lines)


def _tokens(usage: TokenUsage) -> str:
    return (f"audio {usage.audio_in} in / {usage.audio_out} out, text {usage.text_in} in / {usage.text_out} out, "
            f"{usage.cached_in} cached")


def _said_at(at_s: float | None) -> str:
    return "" if at_s is None else f"{at_s:6.1f} s  "


def _at_s(line: sqlite3.Row) -> float | None:
    return line["at_s"] if "at_s" in line.keys() else None


@dataclass(frozen=True)
class LoggedCall:
    """What retention needs of a logged call: whose number it was, when it ended, whether its transcript is kept."""

    call_sid: str
    to_number: str
    ended_at: datetime
    transcript_kept: bool


def logged_calls(connection: sqlite3.Connection) -> list[LoggedCall]:
    """Every call in the log (a connection from `open_for_writing`), oldest first."""
    rows = connection.execute(
        "SELECT call_sid, to_number, ended_at, transcript_purged FROM calls ORDER BY ended_at"
    ).fetchall()
    return [LoggedCall(sid, number, datetime.fromisoformat(ended), not purged) for sid, number, ended, purged in rows]


def delete_transcript(connection: sqlite3.Connection, call_sid: str) -> int:
    """Delete one call's transcript, keeping its row (and saying it was deleted); how many lines went."""
    with connection:
        deleted = connection.execute("DELETE FROM transcript WHERE call_sid = ?", (call_sid,)).rowcount
        connection.execute("UPDATE calls SET transcript_purged = 1 WHERE call_sid = ?", (call_sid,))
    return deleted


def erase_call(connection: sqlite3.Connection, call_sid: str) -> tuple[bool, int, int]:
    """Delete everything the log holds of one call (a caller's erasure): whether its row existed, how many transcript
    lines and stream errors went."""
    with connection:
        row = connection.execute("DELETE FROM calls WHERE call_sid = ?", (call_sid,)).rowcount
        lines = connection.execute("DELETE FROM transcript WHERE call_sid = ?", (call_sid,)).rowcount
        errors = connection.execute("DELETE FROM stream_errors WHERE call_sid = ?", (call_sid,)).rowcount
    return bool(row), lines, errors


@dataclass(frozen=True)
class UsageTotal:
    """A number's logged calls to one model, summed: how many, their time on the line, tokens and estimated cost."""

    number: str
    model: str
    calls: int
    line_seconds: float
    usage: TokenUsage
    cost: float | None
    """Summed over the calls that had prices; `None` when none had."""


def usage_totals(path: Path) -> list[UsageTotal]:
    """Every number's usage in the call log, by model (for the admin API's policy view)."""
    connection = _open_for_reading(path)
    try:
        if _schema_version(connection, str(path)) < 6:
            return []
        rows = connection.execute(
            "SELECT to_number, model, COUNT(*), SUM(duration_s), SUM(audio_in_tokens), SUM(text_in_tokens), "
            "SUM(cached_in_tokens), SUM(audio_out_tokens), SUM(text_out_tokens), SUM(cached_audio_in_tokens), SUM(cost) "
            "FROM calls GROUP BY to_number, model ORDER BY to_number, model"
        ).fetchall()
    except sqlite3.Error as error:
        raise CallLogError(str(path), f"cannot be read: {error}") from None
    finally:
        connection.close()
    return [UsageTotal(row[0], row[1], row[2], row[3], TokenUsage(*row[4:10]), row[10]) for row in rows]
