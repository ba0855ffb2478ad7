"""An operator's tool server on loopback, over real HTTP/1.1: the tests', the demo's and the latency bench's stand-in.

Each request is recorded (path, headers, raw body) and answered by `answer(path, body)`, which
returns a `ToolReply`: a status, a body, and a delay before it. A plain asyncio server, so what the
bridge's HTTP client meets is a real socket, keep-alive included.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from telephony_bridge.testing.changes import Changes


@dataclass(frozen=True)
class ToolReply:
    status: int = 200
    body: bytes | dict[str, Any] | list[Any] = field(default_factory=dict)
    delay_s: float = 0.0

    @property
    def raw(self) -> bytes:
        return self.body if isinstance(self.body, bytes) else json.dumps(self.body).encode("utf-8")


@dataclass(frozen=True)
class ToolRequest:
    path: str
    headers: dict[str, str]
    body: bytes
    received_at: float

    @property
    def json(self) -> Any:
        return json.loads(self.body)


class ToolServer:
    """`async with ToolServer(answer) as server:`; `server.url("/availability")`; `server.requests`."""

    def __init__(self, answer: Callable[[str, Any], ToolReply] = lambda path, body: ToolReply()) -> None:
        self.answer = answer
        self.requests: list[ToolRequest] = []
        self.disconnected = 0
        """Requests whose client went away before their answer was sent (an abandoned tool call)."""
        self.port = 0
        self._server: asyncio.Server | None = None
        self._changes = Changes()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    async def __aenter__(self) -> ToolServer:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 1.0)

    async def wait_for_requests(self, count: int, timeout: float = 5.0) -> list[ToolRequest]:
        return await self._changes.wait_until(
            lambda: self.requests[:count] if len(self.requests) >= count else None, timeout, f"{count} tool requests"
        )

    async def wait_disconnected(self, count: int = 1, timeout: float = 5.0) -> None:
        await self._changes.wait_until(lambda: self.disconnected >= count or None, timeout, "an abandoned request")

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                line = await reader.readline()
                if not line:
                    return
                _, path, _ = line.decode("latin-1").split(" ", 2)
                headers: dict[str, str] = {}
                while (header := await reader.readline()) not in (b"\r\n", b"\n", b""):
                    name, _, value = header.decode("latin-1").partition(":")
                    headers[name.strip().lower()] = value.strip()
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                self.requests.append(ToolRequest(path, headers, body, asyncio.get_running_loop().time()))
                self._changes.fire()
                try:
                    parsed = json.loads(body)
                except ValueError:
                    parsed = None
                reply = self.answer(path, parsed)
                if reply.delay_s:
                    closed = asyncio.ensure_future(reader.read(1))
                    done, _ = await asyncio.wait({closed}, timeout=reply.delay_s)
                    if done:
                        self.disconnected += 1
                        self._changes.fire()
                        return
                    closed.cancel()
                raw = reply.raw
                writer.write(f"HTTP/1.1 {reply.status} X\r\nContent-Type: application/json\r\n"
                             f"Content-Length: {len(raw)}\r\n\r\n".encode("latin-1") + raw)
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError, ValueError):
            return
        finally:
            writer.close()
