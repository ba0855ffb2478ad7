"""Deleting what retention no longer allows: transcripts in the call log, recording files, or all of one call.

`policy.expired` decides; this module does the deleting, on a schedule in the server (`[retention]
purge_every_minutes`, in a worker thread) and at `telephony-bridge purge`. A recording's number is read
from its first line and its end from the file's modification time (the last frame was written at the
call's end). Each deletion leaves one log line naming the call and what kinds of data went, and how
much, never what they held.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from telephony_bridge.call_log import delete_transcript, erase_call, logged_calls, open_for_writing
from telephony_bridge.config import BridgeConfig
from telephony_bridge.policy import expired
from telephony_bridge.store import postgres as fleet_log

log = logging.getLogger(__name__)

_RECORDING_NAME = re.compile(r"^\d{8}T\d{6}-(?P<sid>[A-Za-z0-9_-]+?)(?:-\d{1,2})?\.jsonl$")
"""`recording.CallRecordings` names a file `<UTC start>-<CallSid>.jsonl`, with `-N` when the name was taken."""


@dataclass
class Purged:
    """What one purge deleted, counted; `calls` names each call touched and what of it went."""

    transcripts: int = 0
    transcript_lines: int = 0
    recordings: int = 0
    calls_erased: int = 0
    calls: dict[str, list[str]] = field(default_factory=dict)

    def note(self, call_sid: str, what: str) -> None:
        self.calls.setdefault(call_sid, []).append(what)


def recordings_of(folder: Path, call_sid: str) -> list[Path]:
    """The recording files of one call (a call whose stream restarted may have several)."""
    if not folder.is_dir():
        return []
    found = []
    for path in folder.glob("*.jsonl"):
        match = _RECORDING_NAME.match(path.name)
        if match is not None and match["sid"] == call_sid:
            found.append(path)
    return sorted(found)


def _recording_header(path: Path) -> dict[str, object] | None:
    try:
        with path.open(encoding="utf-8") as file:
            first = json.loads(file.readline())
    except (OSError, ValueError):
        return None
    return first if isinstance(first, dict) else None


def purge_expired(config: BridgeConfig, call_log: Path | None, recordings: Path, now: datetime | None = None,
                  *, database_url: str | None = None) -> Purged:
    """Delete the transcripts and recordings whose number's `retention_days` have run out at `now`.

    With `database_url` (a fleet) the transcripts are the fleet's, in PostgreSQL; `call_log` is not used.
    """
    now = now or datetime.now(UTC)
    purged = Purged()
    if database_url:
        for call in fleet_log.logged_calls(database_url):
            retention = config.profile_for(call.to_number).retention_days
            if call.transcript_kept and "transcript" in expired(retention, call.ended_at, now):
                lines = fleet_log.delete_transcript(database_url, call.call_sid)
                purged.transcripts += 1
                purged.transcript_lines += lines
                purged.note(call.call_sid, f"transcript ({lines} lines)")
    elif call_log is not None and call_log.is_file():
        connection = open_for_writing(call_log)
        try:
            for call in logged_calls(connection):
                retention = config.profile_for(call.to_number).retention_days
                if call.transcript_kept and "transcript" in expired(retention, call.ended_at, now):
                    lines = delete_transcript(connection, call.call_sid)
                    purged.transcripts += 1
                    purged.transcript_lines += lines
                    purged.note(call.call_sid, f"transcript ({lines} lines)")
        finally:
            connection.close()
    if recordings.is_dir():
        for path in sorted(recordings.glob("*.jsonl")):
            header = _recording_header(path)
            if header is None or not isinstance(header.get("called_number"), str):
                continue
            retention = config.profile_for(str(header["called_number"])).retention_days
            ended_at = datetime.fromtimestamp(path.stat().st_mtime, UTC)
            if "recording" in expired(retention, ended_at, now):
                path.unlink(missing_ok=True)
                purged.recordings += 1
                purged.note(str(header.get("call_sid", path.stem)), f"recording {path.name}")
    for call_sid, what in purged.calls.items():
        log.info("retention: deleted %s of call %s", ", ".join(what), call_sid,
                 extra={"event": "purged", "call_sid": call_sid, "deleted": what})
    return purged


def erase(call_sid: str, call_log: Path | None, recordings: Path, *, database_url: str | None = None) -> Purged:
    """Delete everything the bridge keeps of one call (a caller's right to erasure): its call log row, transcript and
    stream errors (in the fleet's PostgreSQL with `database_url`), and its recordings."""
    purged = Purged()
    row, lines, errors = False, 0, 0
    if database_url:
        row, lines, errors = fleet_log.erase_call(database_url, call_sid)
    elif call_log is not None and call_log.is_file():
        connection = open_for_writing(call_log)
        try:
            row, lines, errors = erase_call(connection, call_sid)
        finally:
            connection.close()
    if row:
        purged.calls_erased += 1
        purged.transcript_lines += lines
        purged.note(call_sid, f"call log row, transcript ({lines} lines), stream errors ({errors})")
    for path in recordings_of(recordings, call_sid):
        path.unlink(missing_ok=True)
        purged.recordings += 1
        purged.note(call_sid, f"recording {path.name}")
    what = purged.calls.get(call_sid, ["nothing: the bridge keeps no data of it"])
    log.info("erasure: deleted %s of call %s", ", ".join(what), call_sid,
             extra={"event": "erased", "call_sid": call_sid, "deleted": what})
    return purged
