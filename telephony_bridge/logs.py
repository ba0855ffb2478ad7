"""Log lines operators can read and machines can parse: one JSON object per line, or plain text.

Every line logged while a call is being handled carries the call's `call_sid` and `stream_sid`
(null until Twilio's `start` names the stream), so one query finds all of a call's lines, the
libraries' lines included. The ids travel in a context variable that call.py sets where a call
creates its tasks: asyncio copies the context into each task at creation, so no logger has to be
handed around. The variable holds one shared `CallIds` object rather than two strings, so the
stream id learnt later reaches the tasks started before it.

A call logs one INFO line when it starts and one when it ends (with its summary); everything per
frame stays out of the log, which at 50 frames a second per call would drown the rest.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any, Literal, TextIO

LogFormat = Literal["json", "text"]

_STANDARD_ATTRIBUTES = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName", "color_message"}
"""A record's own attributes; anything else on it came from `extra=` (or the call filter) and is a field of the line."""


class CallIds:
    """The ids of the call a task is working for."""

    __slots__ = ("call_sid", "stream_sid")

    def __init__(self, call_sid: str) -> None:
        self.call_sid = call_sid
        self.stream_sid: str | None = None


_current_call: ContextVar[CallIds | None] = ContextVar("telephony_bridge_call", default=None)


def bind_call(ids: CallIds) -> None:
    """Tag what the current task, and every task it creates from now on, logs with `ids`."""
    _current_call.set(ids)


class CallContextFilter(logging.Filter):
    """Adds `call_sid` and `stream_sid` to records logged on behalf of a call."""

    def filter(self, record: logging.LogRecord) -> bool:
        ids = _current_call.get()
        if ids is not None:
            record.call_sid = ids.call_sid
            record.stream_sid = ids.stream_sid
        return True


class JsonFormatter(logging.Formatter):
    """`ts`, `level`, `logger`, `message`, then the record's extra fields (the call's ids among them)."""

    def format(self, record: logging.LogRecord) -> str:
        line = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        line.update((key, value) for key, value in vars(record).items() if key not in _STANDARD_ATTRIBUTES)
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """For a person at a terminal: the call's ids, when there is a call, before the message."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def formatMessage(self, record: logging.LogRecord) -> str:
        text = super().formatMessage(record)
        call_sid = getattr(record, "call_sid", None)
        if call_sid is None:
            return text
        return f"{text} [{call_sid} {getattr(record, 'stream_sid', None) or '-'}]"


_SECRET_HEADER = re.compile(r"^([<>] *(?:x-twilio-signature|authorization|api-key|cookie|set-cookie)\s*:).*$", re.IGNORECASE)


class RedactFilter(logging.Filter):
    """Keeps secrets and callers' numbers out of the libraries' lines.

    At debug, the websockets library (through uvicorn's logger) writes every handshake header, the
    upgrade's `X-Twilio-Signature` among them, and a Realtime key if it logs the client side;
    uvicorn's access log writes the request's query string, where a webhook configured that way
    carries `From`, `To` and `Caller`. Header values are replaced and query strings dropped.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name == "uvicorn.access":
            record.args = _without_query(record.args, 2)
        elif record.name == "uvicorn.error" and '"WebSocket %s"' in str(record.msg):
            record.args = _without_query(record.args, 1)
        elif record.name.startswith(("uvicorn", "websockets")) and record.levelno <= logging.DEBUG:
            message = record.getMessage()
            redacted = _SECRET_HEADER.sub(r"\1 [redacted]", message)
            if redacted != message:
                record.msg, record.args = redacted, None
        return True


def _without_query(args: object, index: int) -> Any:
    """`args` with the query string of the path at `index` hidden."""
    if not isinstance(args, tuple) or len(args) <= index or not isinstance(args[index], str) or "?" not in args[index]:
        return args
    return (*args[:index], args[index].partition("?")[0] + "?<hidden>", *args[index + 1:])


def log_handler(stream: TextIO, log_format: LogFormat) -> logging.Handler:
    """A handler writing `log_format` lines to `stream`, with the calls' ids and without secrets (`RedactFilter`)."""
    handler = logging.StreamHandler(stream)
    handler.addFilter(CallContextFilter())
    handler.addFilter(RedactFilter())
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    return handler


def configure_logging(log_format: LogFormat | None, level: str, stream: TextIO = sys.stderr) -> None:
    """Send every logger's lines to `stream`; with no format given, JSON unless a person is watching (a TTY).

    Like `logging.basicConfig`, it leaves a root logger that already has handlers alone (a host that embeds the CLI).
    """
    chosen: LogFormat = log_format or ("text" if stream.isatty() else "json")
    logging.basicConfig(level=level.upper(), handlers=[log_handler(stream, chosen)])


class LogThrottle:
    """Says whether the n-th occurrence of something is logged: the first `first`, then every `every`-th.

    A peer that floods a call (3,000 error events made 6.9 MB of WARNING lines) must not fill the
    disk, yet the first few lines and the running count must still reach the operator.
    """

    __slots__ = ("every", "first", "seen")

    def __init__(self, first: int = 10, every: int = 100) -> None:
        self.first = first
        self.every = every
        self.seen = 0

    def __call__(self) -> bool:
        """Count one more occurrence; whether to log it (its number is `seen`)."""
        self.seen += 1
        return self.seen <= self.first or self.seen % self.every == 0


def mask_number(number: str) -> str:
    """+14155550123 -> +1415555****: enough to tell regions apart, not to identify or call back the caller."""
    return number[:-4] + "****" if len(number) > 4 else "*" * len(number)

