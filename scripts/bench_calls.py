#!/usr/bin/env python3
"""How many calls one bridge process carries: CPU, memory and added latency at N concurrent calls.

For each N, one ``telephony-bridge serve`` process is started (signatures checked, so every call
goes through the real webhook, stream token and media socket), pinned to one core. A load
generator, pinned to the other core, plays both far ends over loopback with the real protocols:

* **Twilio side**: a signed voice webhook POST per call, then the signed Media Stream socket:
  ``connected``, ``start`` with the TwiML's parameters, then a 20 ms mu-law frame every 20 ms for
  the whole run. It plays the bridge's audio in real time and echoes each mark when the audio
  before it has played, as Twilio does.
* **Realtime stand-in**: a websocket server that answers ``session.update`` and, for ``--talk`` of
  every ``--period`` seconds, streams an answer in real time: ``response.created``, audio deltas
  of 20-100 ms (``--deltas-ms mixed``) or all of one length (``--deltas-ms 20``, the worst case:
  the most messages per second of audio), a transcript delta every 200 ms of audio, then the
  ``done`` events. It answers in the format the session asked for: PCM16 24 kHz, or ``audio/pcmu``.

Both sides are plain asyncio protocols over websockets' sans-I/O core, so the generator spends
a fraction of what the bridge spends per message, and every timestamp is taken the moment the
bytes arrive (``time.monotonic``, one clock for all processes on the machine).

What is measured, over a window that starts after all calls are up and warmed:

* **CPU**: utime + stime of the bridge process (all threads) from ``/proc/PID/stat``, as ms of
  CPU per call-second, with the kernel's share (on loopback a sender's kernel time includes
  delivering into the receiver's socket). The generator's own CPU is reported next to it: if it
  nears 100 % of its core, the latencies measure the generator too.
* **Wakeups**: the bridge's voluntary context switches per call-second, i.e. how often its loop
  went idle and was woken. Few calls mean a wakeup for almost every message, and each costs CPU
  of its own, which is why CPU per call-second is higher at 10 calls than at 100.
* **Memory**: VmRSS at the end of the window minus VmRSS after a two-call warm-up, per call.
* **Latency, caller -> model**: a caller frame is matched by cumulative audio position: frame i
  (160 i mu-law bytes sent) has arrived when the stand-in has received ``960 i - 132`` bytes of
  PCM16 (the converter holds back 22 input samples of look-ahead, 2.75 ms), or ``160 i`` bytes of
  mu-law from a passthrough relay.
* **Latency, model -> caller**: a delta is out when the caller has received
  ``(S - 66) // 3`` mu-law bytes of the answer, S being the answer's 24 kHz samples sent so far
  (66 samples of look-ahead), plus everything of earlier answers.
* **Audio lost**: after the window, audio stops both ways and drains; each call must then have
  received exactly ``6 U - 132`` PCM bytes for U mu-law bytes sent, and ``sum(S // 3)`` mu-law
  bytes for its answers (the tail of each answer is flushed at its end).

Latency is from the generator's send to the generator's receive: two loopback hops and the
generator's own scheduling are included, so it is an upper bound of the bridge's added latency.
Under each row the report says how often a generator's own loop ran over 2 ms late, how long the
bridge waited for its CPU while ready to run, and the hypervisor's steal, when there was any.

Usage (about 30 s per N and configuration)::

    .venv/bin/python scripts/bench_calls.py --calls 10,50,100,200 --seconds 20
    .venv/bin/python scripts/bench_calls.py --calls 100 --baseline HEAD   # committed code, then this tree
    .venv/bin/python scripts/bench_calls.py --calls 100 --profile /tmp/prof  # py-spy the bridge

``--baseline REV`` runs the bridge of git revision REV (exported read-only with ``git archive``)
before the working tree's for each N, with the speed-up packages REV does not depend on hidden
from it, so the table shows before and after side by side; ``--baseline DIR`` runs the package
in DIR/telephony_bridge instead (say, a copy of the tree with one change undone).
``--bridge-command`` benchmarks any other launcher of the bridge. ``--baseline-relay`` also runs
``scripts/baseline_relay.py`` (Twilio's sample relay, mu-law passthrough) before the bridge for
each N and workload, so the bridge's CPU reads against the cost of the simplest relay; ``--pcmu``
runs this tree a second time with ``audio_format = "pcmu"`` for every number::

    .venv/bin/python scripts/bench_calls.py --calls 10,100 --baseline-relay   # both workloads

``--repeat N`` measures everything N times, reversing the flavours' order every other round, and
ends with each flavour's median ratio to the first flavour's CPU measured in the same round: the
machine's speed drifts over minutes, and a relay that saturates its core cannot show it::

    .venv/bin/python scripts/bench_calls.py --calls 100 --baseline-relay --repeat 3
"""

from __future__ import annotations

import argparse
import array
import asyncio
import base64
import contextlib
import ctypes
import gc
import itertools
import json
import multiprocessing
import os
import random
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import tomllib
import warnings
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import numpy as np
from twilio.request_validator import RequestValidator
from websockets.client import ClientProtocol
from websockets.frames import Frame, Opcode
from websockets.http11 import Request, Response
from websockets.server import ServerProtocol
from websockets.uri import parse_uri

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import audioop

from telephony_bridge.testing.bench_accounting import (
    b64_length,
    match_latencies,
    pcm_bytes_due_array,
    ulaw_bytes_due,
    ulaw_bytes_due_array,
)
from telephony_bridge.testing.twilio_playback import MarkEcho, TwilioPlayback
from telephony_bridge.testing.vad import speech_like_pcm16
from telephony_bridge.wire import (
    FRAME_MS,
    PCM24K_RATE_HZ,
    SERVER_EVENTS,
    ULAW_BYTES_PER_MS,
    ULAW_FRAME_BYTES,
    ULAW_RATE_HZ,
)

REPO = Path(__file__).resolve().parent.parent
GA = SERVER_EVENTS["ga"]
WORKLOADS = {"mixed": (40, 20, 60, 100, 80), "20": (20,)}
"""Model delta lengths in ms, cycled: today's 20-100 ms (60 on average), and 20 ms only (the most messages)."""
TRANSCRIPT_EVERY_MS = 200
SPEEDUP_MODULES = ("uvloop", "httptools", "orjson")
AUTH_TOKEN = "bench-twilio-auth-token"
NUMBER_BASE = "+1415555"
LATENESS_PROBE_S = 0.005
LATE_REPORTED_S = 0.002

# ----------------------------------------------------------------------------- generator: shared


_PAYLOAD = re.compile(rb'"(?:payload|audio|delta)"\s*:\s*"([^"]*)"')
_EVENT = re.compile(rb'"(?:event|type)"\s*:\s*"([^"]+)"')
_NAME = re.compile(rb'"name"\s*:\s*"([^"]*)"')


def _payload_length(message: bytes) -> int:
    match = _PAYLOAD.search(message)
    if match is None:
        return 0
    start, end = match.span(1)
    return b64_length(end - start, message[end - 2 : end])


class _Socket(asyncio.Protocol):
    """A websocket over an asyncio transport: websockets' sans-I/O protocol, no tasks, no queues."""

    ws: ClientProtocol | ServerProtocol

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self._fragments: list[bytes] = []
        self.closed = False

    def flush(self) -> None:
        for chunk in self.ws.data_to_send():
            if chunk:
                self.transport.write(chunk)  # type: ignore[union-attr]
            elif self.transport.can_write_eof():  # type: ignore[union-attr]
                self.transport.write_eof()  # type: ignore[union-attr]

    def send(self, text: str) -> None:
        if self.closed:
            return
        self.ws.send_text(text.encode())
        self.flush()

    def data_received(self, data: bytes) -> None:
        now = time.monotonic()
        self.ws.receive_data(data)
        for event in self.ws.events_received():
            if isinstance(event, Frame):
                if event.opcode is Opcode.TEXT or event.opcode is Opcode.CONT:
                    if event.fin:
                        if self._fragments:
                            self._fragments.append(event.data)
                            message, self._fragments = b"".join(self._fragments), []
                        else:
                            message = event.data
                        self.on_text(message, now)
                    else:
                        self._fragments.append(event.data)
                elif event.opcode is Opcode.CLOSE:
                    self.closed = True
            else:
                self.on_handshake(event)
        self.flush()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            with contextlib.suppress(Exception):
                self.ws.send_close(1000)
                self.flush()
        if self.transport is not None:
            self.transport.close()

    def on_handshake(self, event: Request | Response) -> None:
        raise NotImplementedError

    def on_text(self, message: bytes, now: float) -> None:
        raise NotImplementedError


def _nodelay(transport: asyncio.BaseTransport) -> bool:
    sock = transport.get_extra_info("socket")
    return bool(sock is not None and sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))


# ----------------------------------------------------------------------------- generator: Twilio side


def _caller_payloads() -> list[str]:
    """One second of speech-like caller audio as 50 base64 frames (content costs nothing; realism is free)."""
    ulaw = audioop.lin2ulaw(speech_like_pcm16(1000, rate=ULAW_RATE_HZ), 2)
    return [
        base64.b64encode(ulaw[i : i + ULAW_FRAME_BYTES]).decode() for i in range(0, len(ulaw), ULAW_FRAME_BYTES)
    ]


@dataclass
class CallerRecord:
    """What the Twilio side of one call sent and received, by time and running audio total."""

    frames_at: array.array = field(default_factory=lambda: array.array("d"))
    audio_at: array.array = field(default_factory=lambda: array.array("d"))
    audio_total: array.array = field(default_factory=lambda: array.array("q"))
    marks: int = 0
    clears: int = 0
    other: int = 0
    nodelay: bool = False


class TwilioLeg(_Socket):
    """The Media Stream of one call, as Twilio's media server would run it."""

    def __init__(
        self, loop: asyncio.AbstractEventLoop, url: str, signature: str, start: dict[str, Any], payloads: list[str]
    ) -> None:
        super().__init__()
        self.loop = loop
        self.ws = ClientProtocol(parse_uri(url), max_size=None)
        self.signature = signature
        self.start = start
        self.stream_sid = start["streamSid"]
        self.payloads = payloads
        self.opened: asyncio.Future[None] = loop.create_future()
        self.record = CallerRecord()
        self.sending = False
        self._sequence = 1
        self._frames = 0
        self._first_at = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._received = 0
        self._playback = TwilioPlayback()
        self._echo_timer: asyncio.TimerHandle | None = None
        self._echo_at: float | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.record.nodelay = _nodelay(transport)
        request = self.ws.connect()
        request.headers["X-Twilio-Signature"] = self.signature
        self.ws.send_request(request)
        self.flush()

    def on_handshake(self, event: Request | Response) -> None:
        if isinstance(event, Response) and event.status_code == 101:
            self.opened.set_result(None)
        elif not self.opened.done():
            self.opened.set_exception(RuntimeError(f"media socket refused: {getattr(event, 'status_code', event)}"))

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        self.sending = False
        if not self.opened.done():
            self.opened.set_exception(RuntimeError("media socket closed during the handshake"))

    def begin(self) -> None:
        self.send('{"event":"connected","protocol":"Call","version":"1.0.0"}')
        self.send(json.dumps({"event": "start", "sequenceNumber": "1", "streamSid": self.stream_sid, "start": self.start}))
        self.sending = True
        self._first_at = self.loop.time()
        self._send_frame()

    def _send_frame(self) -> None:
        if not self.sending or self.closed:
            return
        self._sequence += 1
        frame = self._frames
        self._frames += 1
        message = (
            f'{{"event":"media","sequenceNumber":"{self._sequence}","streamSid":"{self.stream_sid}",'
            f'"media":{{"track":"inbound","chunk":"{frame + 1}","timestamp":"{52 + FRAME_MS * frame}",'
            f'"payload":"{self.payloads[frame % len(self.payloads)]}"}}}}'
        )
        self.record.frames_at.append(time.monotonic())
        self.send(message)
        self._timer = self.loop.call_at(self._first_at + self._frames * FRAME_MS / 1000, self._send_frame)

    def stop_audio(self) -> None:
        self.sending = False
        if self._timer is not None:
            self._timer.cancel()

    def hang_up(self) -> None:
        self.stop_audio()
        if self._echo_timer is not None:
            self._echo_timer.cancel()
        self._sequence += 1
        self.send(json.dumps({"event": "stop", "sequenceNumber": str(self._sequence), "streamSid": self.stream_sid, "stop": {}}))
        self.close()

    def on_text(self, message: bytes, now: float) -> None:
        event = _EVENT.search(message, 0, 40)
        kind = event.group(1) if event else b""
        if kind == b"media":
            n = _payload_length(message)
            self._received += n
            self.record.audio_at.append(now)
            self.record.audio_total.append(self._received)
            self._echo(self._playback.media(now, n))
        elif kind == b"mark":
            self.record.marks += 1
            match = _NAME.search(message)
            self._echo(self._playback.mark(now, match.group(1).decode() if match else ""))
        elif kind == b"clear":
            self.record.clears += 1
            self._echo(self._playback.clear(now))
        else:
            self.record.other += 1

    def _echo(self, echoes: list[MarkEcho]) -> None:
        """Send what Twilio echoes now, and wake up when the next pending mark's audio has played."""
        for echo in echoes:
            self._sequence += 1
            self.send(
                f'{{"event":"mark","sequenceNumber":"{self._sequence}","streamSid":"{self.stream_sid}",'
                f'"mark":{{"name":"{echo.name}"}}}}'
            )
        due = self._playback.next_mark_at()
        if due == self._echo_at:
            return
        if self._echo_timer is not None:
            self._echo_timer.cancel()
            self._echo_timer = None
        self._echo_at = due
        if due is not None and not self.closed:
            # Playback runs on time.monotonic(); uvloop's clock is coarser, so only the delay is carried over.
            delay = max(0.0, due - time.monotonic())
            self._echo_timer = self.loop.call_at(self.loop.time() + delay, self._echo_due, due)

    def _echo_due(self, due: float) -> None:
        self._echo_timer, self._echo_at = None, None
        self._echo(self._playback.advance(max(due, time.monotonic())))


# ----------------------------------------------------------------------------- generator: Realtime stand-in


def _delta_payloads() -> dict[tuple[bool, int], str]:
    """Model audio per (mu-law?, ms): PCM16 24 kHz for the bridge, mu-law 8 kHz for a pcmu session."""
    payloads = {}
    for ms in {ms for cycle in WORKLOADS.values() for ms in cycle}:
        pcm = speech_like_pcm16(ms, rate=PCM24K_RATE_HZ)
        ulaw = audioop.lin2ulaw(audioop.ratecv(pcm, 2, 1, PCM24K_RATE_HZ, ULAW_RATE_HZ, None)[0], 2)
        payloads[False, ms] = base64.b64encode(pcm).decode()
        payloads[True, ms] = base64.b64encode(ulaw[: ULAW_BYTES_PER_MS * ms].ljust(ULAW_BYTES_PER_MS * ms, b"\xff")).decode()
    return payloads


@dataclass
class ModelRecord:
    """What the stand-in of one call received and sent, by time and running audio total."""

    appends_at: array.array = field(default_factory=lambda: array.array("d"))
    append_total: array.array = field(default_factory=lambda: array.array("q"))
    deltas_at: array.array = field(default_factory=lambda: array.array("d"))
    deltas_due: array.array = field(default_factory=lambda: array.array("q"))
    ulaw_expected: int = 0
    responses: int = 0
    other: int = 0
    nodelay: bool = False


class RealtimeLeg(_Socket):
    """One Realtime session: answers session.update, then talks for `talk` of every `period` seconds."""

    def __init__(self, generator: LoadGenerator) -> None:
        super().__init__()
        self.generator = generator
        self.loop = generator.loop
        self.ws = ServerProtocol(max_size=None)
        self.record = ModelRecord()
        self.tag: int | None = None
        self.talking = False
        self._appended = 0
        self._timer: asyncio.TimerHandle | None = None
        self._response = 0
        self._prefix = ""
        self._ids = ""
        self._deltas = 0
        self._item_samples = 0
        self._item_ms = 0
        self._talk_ms = 0
        self._answer_at = 0.0
        self._answering = False
        self._response_id = ""
        self._earlier_items_ulaw = 0
        self.ulaw = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.record.nodelay = _nodelay(transport)

    def on_handshake(self, event: Request | Response) -> None:
        if isinstance(event, Request):
            self.ws.send_response(self.ws.accept(event))
            self.send('{"type":"session.created","session":{"type":"realtime"}}')

    def on_text(self, message: bytes, now: float) -> None:
        event = _EVENT.search(message, 0, 60)
        kind = event.group(1) if event else b""
        if kind == b"input_audio_buffer.append":
            self._appended += _payload_length(message)
            self.record.appends_at.append(now)
            self.record.append_total.append(self._appended)
        elif kind == b"session.update":
            session = json.loads(message)["session"]
            self.ulaw = session.get("audio", {}).get("output", {}).get("format", {}).get("type") == "audio/pcmu"
            # The bridge's instructions end in the tag; the baseline relay's in the called number.
            self.tag = int(session["instructions"].split()[-1].removeprefix(NUMBER_BASE))
            self.generator.sessions[self.tag] = self
            self.send('{"type":"session.updated","session":{"type":"realtime"}}')
            if self.generator.talking:
                self.talking = True
                self._schedule_answer(self.loop.time() + random.uniform(0.2, self.generator.period_s))
        else:
            self.record.other += 1

    def _schedule_answer(self, at: float) -> None:
        self._answer_at = at
        self._timer = self.loop.call_at(at, self._begin_answer)

    def _begin_answer(self) -> None:
        if not self.talking or self.closed:
            return
        self._response += 1
        self.record.responses += 1
        response_id, item_id = f"resp_{self.tag}_{self._response}", f"item_{self.tag}_{self._response}"
        self._answering, self._response_id = True, response_id
        self._ids = f'"response_id":"{response_id}","item_id":"{item_id}","output_index":0,"content_index":0'
        self._prefix = '{"type":"' + GA.audio_delta + '",' + self._ids + ',"delta":"'
        self.send(f'{{"type":"response.created","response":{{"id":"{response_id}","status":"in_progress","output":[]}}}}')
        self.send(
            f'{{"type":"response.output_item.added","response_id":"{response_id}","output_index":0,'
            f'"item":{{"id":"{item_id}","type":"message","role":"assistant","content":[]}}}}'
        )
        self._item_samples = 0
        self._item_ms = 0
        self._talk_ms = int(self.generator.talk * self.generator.period_s * 1000)
        self._send_delta()

    def _send_delta(self) -> None:
        if self.closed:
            return
        if not self.talking or self._item_ms >= self._talk_ms:
            self._end_answer()
            return
        cycle = self.generator.deltas_ms
        ms = min(cycle[self._deltas % len(cycle)], self._talk_ms - self._item_ms)
        if (self.ulaw, ms) not in self.generator.delta_payloads:
            ms = 20
        self._deltas += 1
        before = self._item_ms
        self._item_ms += ms
        self._item_samples += PCM24K_RATE_HZ // 1000 * ms
        self.record.deltas_at.append(time.monotonic())
        item_due = ULAW_BYTES_PER_MS * self._item_ms if self.ulaw else ulaw_bytes_due(self._item_samples)
        self.record.deltas_due.append(self._earlier_items_ulaw + item_due)
        self.send(self._prefix + self.generator.delta_payloads[self.ulaw, ms] + '"}')
        if before // TRANSCRIPT_EVERY_MS != self._item_ms // TRANSCRIPT_EVERY_MS:
            self.send('{"type":"' + GA.transcript_delta + '",' + self._ids + ',"delta":"word "}')
        self._timer = self.loop.call_at(self._answer_at + self._item_ms / 1000.0, self._send_delta)

    def _end_answer(self) -> None:
        self._answering = False
        self.send('{"type":"' + GA.audio_done + '",' + self._ids + "}")
        self.send('{"type":"' + GA.transcript_done + '",' + self._ids + ',"transcript":"words"}')
        self.send(f'{{"type":"response.done","response":{{"id":"{self._response_id}","status":"completed","output":[]}}}}')
        self._earlier_items_ulaw += self._item_samples // (PCM24K_RATE_HZ // ULAW_RATE_HZ)
        self.record.ulaw_expected = self._earlier_items_ulaw
        if self.talking:
            self._schedule_answer(self._answer_at + self.generator.period_s)

    def stop_talking(self) -> None:
        """End the answer under way at once (its done events flush the converter) and start no other."""
        self.talking = False
        if self._timer is not None:
            self._timer.cancel()
        if self._answering:
            self._end_answer()


# ----------------------------------------------------------------------------- generator process


class LoadGenerator:
    """One generator process: Twilio legs for its share of the calls, and a share of the stand-in's sessions."""

    def __init__(self, loop: asyncio.AbstractEventLoop, conn: Any, standin_port: int, talk: float, period_s: float) -> None:
        self.loop = loop
        self.conn = conn
        self.standin_port = standin_port
        self.talk = talk
        self.period_s = period_s
        self.talking = False
        self.deltas_ms = WORKLOADS["mixed"]
        self.calls: dict[int, TwilioLeg] = {}
        self.sessions: dict[int, RealtimeLeg] = {}
        self.payloads = _caller_payloads()
        self.delta_payloads = _delta_payloads()
        self.done = loop.create_future()
        self.server: asyncio.AbstractServer | None = None
        self.late: list[tuple[float, float]] = []
        """(when, by how much) this process's loop ran late: the latency figures include it."""
        self._probe_due = 0.0
        self._probe: asyncio.TimerHandle | None = None

    async def run(self) -> None:
        self.server = await self.loop.create_server(
            lambda: RealtimeLeg(self), "127.0.0.1", self.standin_port, reuse_port=True, backlog=2048
        )
        self.loop.add_reader(self.conn.fileno(), self._command)
        self._reply("listening")
        await self.done

    def _reply(self, *message: Any) -> None:
        """Send to the orchestrator; the event loop made the pipe non-blocking, and results outgrow its buffer."""
        os.set_blocking(self.conn.fileno(), True)
        try:
            self.conn.send(message)
        finally:
            os.set_blocking(self.conn.fileno(), False)

    def _command(self) -> None:
        command, *args = self.conn.recv()
        if command == "run":
            self.loop.create_task(self._open_calls(*args))
        elif command == "stop":
            self.loop.create_task(self._stop(*args))
        elif command == "quit":
            self.done.set_result(None)

    async def _open_calls(self, bridge_port: int, tags: list[int], deltas_ms: tuple[int, ...]) -> None:
        self.talking = True
        self.deltas_ms = deltas_ms
        limit = asyncio.Semaphore(16)

        async def open_one(tag: int) -> None:
            async with limit:
                try:
                    async with asyncio.timeout(15):
                        self.calls[tag] = await self._dial(bridge_port, tag)
                except TimeoutError:
                    raise RuntimeError(f"call {tag}: webhook or media socket not answered within 15 s") from None

        try:
            await asyncio.gather(*(open_one(tag) for tag in tags))
            # A full collection stopped this process for 20-75 ms, which the latency figures then
            # charged to the bridge: no collection runs while the calls are measured.
            gc.freeze()
            gc.disable()
            self._probe_due = time.monotonic()
            self._probe_lateness()
            self._reply("ready", time.monotonic())
        except Exception as error:  # report, do not hang the orchestrator
            self._reply("failed", f"{type(error).__name__}: {error}")

    def _probe_lateness(self) -> None:
        now = time.monotonic()
        if now - self._probe_due > LATE_REPORTED_S:
            self.late.append((now, now - self._probe_due))
        self._probe_due = now + LATENESS_PROBE_S
        self._probe = self.loop.call_later(LATENESS_PROBE_S, self._probe_lateness)

    async def _dial(self, port: int, tag: int) -> TwilioLeg:
        public = f"http://127.0.0.1:{port}"
        call_sid, account_sid = "CA" + secrets.token_hex(16), "AC" + secrets.token_hex(16)
        params = {
            "AccountSid": account_sid, "ApiVersion": "2010-04-01", "CallSid": call_sid, "CallStatus": "ringing",
            "Direction": "inbound", "From": "+15005550006", "To": f"{NUMBER_BASE}{tag:04d}",
        }
        validator = RequestValidator(AUTH_TOKEN)
        body = urlencode(params).encode()
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(
            (
                f"POST /twilio/voice HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUser-Agent: TwilioProxy/1.1\r\n"
                "Content-Type: application/x-www-form-urlencoded\r\n"
                f"X-Twilio-Signature: {validator.compute_signature(public + '/twilio/voice', params)}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
            ).encode()
            + body
        )
        answer = await reader.read()
        writer.close()
        head, _, twiml = answer.partition(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 200"):
            raise RuntimeError(f"webhook answered {head.splitlines()[0]!r}")
        stream = ET.fromstring(twiml).find("./Connect/Stream")
        if stream is None:
            raise RuntimeError(f"webhook answered without a stream: {twiml[:200]!r}")
        parameters = {p.get("name"): p.get("value") for p in stream.findall("Parameter")}
        wss_url = stream.get("url")
        stream_sid = "MZ" + secrets.token_hex(16)
        start = {
            "accountSid": account_sid, "streamSid": stream_sid, "callSid": call_sid, "tracks": ["inbound"],
            "customParameters": parameters,
            "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": ULAW_RATE_HZ, "channels": 1},
        }
        leg = TwilioLeg(
            self.loop, f"ws://127.0.0.1:{port}/twilio/media", validator.compute_signature(wss_url, {}), start, self.payloads
        )
        await self.loop.create_connection(lambda: leg, "127.0.0.1", port)
        await leg.opened
        leg.begin()
        return leg

    async def _stop(self, drain_s: float) -> None:
        """Stop audio both ways, let it drain, report what each call sent and received, hang up."""
        self.talking = False
        for leg in self.calls.values():
            leg.stop_audio()
        for session in self.sessions.values():
            session.stop_talking()
        await asyncio.sleep(drain_s)
        calls = {tag: leg.record for tag, leg in self.calls.items()}
        sessions = {tag: session.record for tag, session in self.sessions.items()}
        if self._probe is not None:
            self._probe.cancel()
        self._reply("result", calls, sessions, self.late)
        self.late = []
        for leg in self.calls.values():
            leg.hang_up()
        for session in self.sessions.values():
            session.close()
        self.calls.clear()
        self.sessions.clear()
        gc.unfreeze()
        gc.enable()


def _generator_main(conn: Any, cpu: int | None, standin_port: int, talk: float, period_s: float) -> None:
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        import uvloop

        loop = uvloop.new_event_loop()
    except ImportError:
        loop = asyncio.new_event_loop()
    generator = LoadGenerator(loop, conn, standin_port, talk, period_s)
    loop.run_until_complete(generator.run())


# ----------------------------------------------------------------------------- the bridge process


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def cpu_times(pid: int) -> tuple[float, float]:
    """(utime, stime) of a process, all threads, in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, all threads, in seconds."""
    return sum(cpu_times(pid))


def steal_ticks(cpu: int | None) -> int:
    """Time the hypervisor ran something else instead of this virtual CPU (the whole machine's if `cpu` is None)."""
    name = "cpu" if cpu is None else f"cpu{cpu}"
    for line in Path("/proc/stat").read_text().splitlines():
        fields = line.split()
        if fields[0] == name:
            return int(fields[8]) if len(fields) > 8 else 0
    return 0


def run_queue_wait_s(pid: int) -> float:
    """Time the process's threads were ready to run but waited for a CPU (schedstat), in seconds."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            total += int((task / "schedstat").read_text().split()[1])
    return total / 1e9


def _status(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {key} in /proc/{pid}/status")


def rss_bytes(pid: int) -> int:
    return _status(pid, "VmRSS") * 1024


def wakeups(pid: int) -> int:
    """Times the main thread went to sleep and was woken (voluntary context switches): one per event-loop poll that waited."""
    return _status(pid, "voluntary_ctxt_switches")


def tcp_nodelay_census(pid: int) -> tuple[int, int] | None:
    """(sockets with TCP_NODELAY, established TCP sockets) in another process, via pidfd_getfd; None if not permitted."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        pidfd = os.pidfd_open(pid)
    except (OSError, AttributeError):
        return None
    on = total = 0
    try:
        for entry in os.scandir(f"/proc/{pid}/fd"):
            try:
                if not os.readlink(entry.path).startswith("socket:"):
                    continue
            except OSError:
                continue
            fd = libc.syscall(438, pidfd, int(entry.name), 0)  # pidfd_getfd (Linux >= 5.6, x86-64)
            if fd < 0:
                if ctypes.get_errno() in (1, 38):  # EPERM, ENOSYS
                    return None
                continue
            with socket.socket(fileno=fd) as sock:
                if sock.family not in (socket.AF_INET, socket.AF_INET6) or sock.type != socket.SOCK_STREAM:
                    continue
                try:
                    sock.getpeername()
                except OSError:
                    continue  # the listener
                total += 1
                on += bool(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
    finally:
        os.close(pidfd)
    return on, total


def _write_config(path: Path, calls: int, audio_format: str = "pcm16") -> None:
    lines = [
        f'[defaults]\ninstructions = "bench call 0"\naudio_format = "{audio_format}"\n', f"[limits]\nmax_calls = {calls + 10}\n"
    ]
    for tag in range(calls):
        lines.append(f'[numbers."{NUMBER_BASE}{tag:04d}"]\ninstructions = "bench call {tag}"\n')
    path.write_text("\n".join(lines))


@dataclass
class Flavour:
    """A bridge to run: the working tree's, or a git revision exported read-only."""

    name: str
    command: list[str]
    pythonpath: str | None = None
    model_ulaw: bool = False
    """The flavour asks the model for mu-law (a passthrough relay, or pcmu numbers): caller audio is due byte for byte."""
    config: Path | None = None
    """The flavour's own configuration file, instead of the run's."""


def working_tree_flavour() -> Flavour:
    # The shared virtualenv may have another worktree installed: this tree's package goes first.
    return Flavour("this tree", [str(REPO / ".venv/bin/telephony-bridge")], str(REPO))


def baseline_relay_flavour() -> Flavour:
    return Flavour("baseline relay", [sys.executable, str(REPO / "scripts/baseline_relay.py")], model_ulaw=True)


def baseline_flavour(revision: str, workdir: Path) -> Flavour:
    """REV's package, run with the speed-up packages REV does not declare hidden from it.

    A directory holding a ``telephony_bridge`` package is run as it is, nothing hidden.
    """
    if (Path(revision) / "telephony_bridge").is_dir():
        root = Path(revision).resolve()
        return Flavour(root.name, [sys.executable, "-c", "from telephony_bridge.cli import main; main()"], str(root))
    root = workdir / f"baseline-{revision.replace('/', '_')}"
    root.mkdir()
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", revision, "telephony_bridge", "pyproject.toml"],
        check=True, capture_output=True,
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(root)], input=archive, check=True)
    declared = " ".join(tomllib.loads((root / "pyproject.toml").read_text())["project"]["dependencies"]).lower()
    hidden = root / "hidden"
    hidden.mkdir()
    for module in SPEEDUP_MODULES:
        if module not in declared:
            (hidden / f"{module}.py").write_text(f'raise ImportError("{module}: not a dependency of {revision}")\n')
    git = ["git", "-C", str(REPO), "rev-parse", "--short", revision]
    short = subprocess.run(git, capture_output=True, text=True).stdout.strip()
    return Flavour(
        f"{revision} ({short})",
        [sys.executable, "-c", "from telephony_bridge.cli import main; main()"],
        f"{hidden}{os.pathsep}{root}",
    )


@contextlib.contextmanager
def running_bridge(flavour: Flavour, port: int, standin_port: int, config: Path, cpu: int | None):
    """The bridge as an operator runs it (default log level), in a scratch folder so nothing it writes lands in the repo."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AZURE_OPENAI_", "OPENAI_", "REALTIME_", "TWILIO_"))}
    env.update(
        PUBLIC_URL=f"http://127.0.0.1:{port}",
        TWILIO_AUTH_TOKEN=AUTH_TOKEN,
        OPENAI_API_KEY="sk-bench",
        REALTIME_URL=f"ws://127.0.0.1:{standin_port}/v1/realtime?model=gpt-realtime",
        BRIDGE_CONFIG=str(config),
        STREAM_TOKEN_SECRET=secrets.token_hex(16),
        PYTHONUNBUFFERED="1",
    )
    env.pop("PYTHONPATH", None)
    if flavour.pythonpath:
        env["PYTHONPATH"] = flavour.pythonpath
    command = [*flavour.command, "serve", "--host", "127.0.0.1", "--port", str(port)]
    log = tempfile.TemporaryFile()
    process = subprocess.Popen(
        command, env=env, cwd=config.parent, stdout=log, stderr=subprocess.STDOUT,
        preexec_fn=(lambda: os.sched_setaffinity(0, {cpu})) if cpu is not None else None,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            if process.poll() is not None:
                log.seek(0)
                raise RuntimeError(f"bridge exited with {process.returncode}:\n{log.read().decode()[-2000:]}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5) as probe:
                probe.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                if probe.recv(64).startswith(b"HTTP/1.1 200"):
                    break
            if time.monotonic() > deadline:
                raise RuntimeError("bridge did not answer /healthz within 30 s")
            time.sleep(0.1)
        yield process
    finally:
        for _ in range(2):  # the first signal starts a drain of live calls, the second ends it
            process.send_signal(signal.SIGINT)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(3)
                break
        if process.poll() is None:
            process.kill()
            process.wait()
        log.seek(0)
        lines = log.read().decode(errors="replace").splitlines()
        log.close()
        errors = [i for i, line in enumerate(lines) if "ERROR" in line or line.startswith("Traceback")]
        if errors:
            first = errors[0]
            print(f"  bridge logged {len(errors)} error lines; the first:", file=sys.stderr)
            print("\n".join("    " + line[:200] for line in lines[first : first + 25]), file=sys.stderr)


# ----------------------------------------------------------------------------- one measurement


@dataclass
class Result:
    flavour: str
    workload: str
    calls: int
    cpu_ms_per_call_s: float
    cpu_core_pct: float
    kernel_pct: float
    rss_mb_per_call: float
    wakeups_per_call_s: float
    up_p50: float
    up_p99: float
    down_p50: float
    down_p99: float
    up_lost: int
    down_lost: int
    calls_lossy: int
    generator_pct: float
    nodelay: str
    matched: tuple[int, int]
    notes: list[str]
    round: int = 0


class Generators:
    """The generator processes, pinned to their core; they outlive a bridge, one set per run."""

    def __init__(self, count: int, cpu: int | None, standin_port: int, talk: float, period_s: float) -> None:
        context = multiprocessing.get_context("fork")
        self.pipes = []
        self.processes = []
        for _ in range(count):
            ours, theirs = context.Pipe()
            process = context.Process(target=_generator_main, args=(theirs, cpu, standin_port, talk, period_s), daemon=True)
            process.start()
            self.pipes.append(ours)
            self.processes.append(process)
        for pipe in self.pipes:
            self._expect(pipe, "listening", 30)

    @staticmethod
    def _expect(pipe: Any, kind: str, timeout_s: float) -> tuple[Any, ...]:
        if not pipe.poll(timeout_s):
            raise RuntimeError(f"generator sent no {kind!r} within {timeout_s:g} s")
        message = pipe.recv()
        if message[0] != kind:
            raise RuntimeError(f"generator: expected {kind!r}, got {message[0]!r}: {message[1:]}")
        return message

    def cpu_seconds(self) -> float:
        return sum(cpu_seconds(process.pid) for process in self.processes)

    def open_calls(self, bridge_port: int, calls: int, deltas_ms: tuple[int, ...] = WORKLOADS["mixed"]) -> float:
        for index, pipe in enumerate(self.pipes):
            pipe.send(("run", bridge_port, list(range(index, calls, len(self.pipes))), deltas_ms))
        return max(self._expect(pipe, "ready", 60 + calls * 0.2)[1] for pipe in self.pipes)

    def stop(
        self, drain_s: float
    ) -> tuple[dict[int, CallerRecord], dict[int, ModelRecord], list[tuple[float, float]]]:
        """What each call sent and received, and when (and by how much) a generator's own loop ran late."""
        for pipe in self.pipes:
            pipe.send(("stop", drain_s))
        calls: dict[int, CallerRecord] = {}
        sessions: dict[int, ModelRecord] = {}
        late: list[tuple[float, float]] = []
        for pipe in self.pipes:
            _, their_calls, their_sessions, their_late = self._expect(pipe, "result", drain_s + 30)
            calls.update(their_calls)
            sessions.update(their_sessions)
            late.extend(their_late)
        return calls, sessions, late

    def close(self) -> None:
        for pipe in self.pipes:
            with contextlib.suppress(OSError):
                pipe.send(("quit",))
        for process in self.processes:
            process.join(5)
            if process.is_alive():
                process.kill()


def _percentile(values: np.ndarray, q: float) -> float:
    return float(np.percentile(values, q)) * 1000.0 if len(values) else float("nan")


def measure(
    flavour: Flavour, calls: int, seconds: float, generators: Generators, standin_port: int, config: Path,
    bridge_cpu: int | None, profile_dir: Path | None, native: bool = False, workload: str = "mixed",
) -> Result:
    port = _free_port()
    notes: list[str] = []
    with running_bridge(flavour, port, standin_port, flavour.config or config, bridge_cpu) as bridge:
        generators.open_calls(port, 2)  # warm-up: lazy imports and first-use allocations are not per call
        time.sleep(1.0)
        generators.stop(0.3)
        time.sleep(0.5)
        rss_idle = rss_bytes(bridge.pid)

        generators.open_calls(port, calls, WORKLOADS[workload])
        time.sleep(2.0)  # every call streaming both ways, answers under way
        profiler = None
        if profile_dir is not None:
            profile_dir.mkdir(parents=True, exist_ok=True)
            raw = profile_dir / f"{flavour.name.split()[0].replace('/', '_')}-{calls}-{workload}.txt"
            py_spy = shutil.which("py-spy") or str(REPO / ".venv/bin/py-spy")
            # Non-blocking sampling: blocking mode stops the bridge at its system calls and so
            # over-counts them (getpid showed 13 % of samples for 0.4 % of the time). Stacks may come
            # out truncated, so the summary uses self time only.
            profiler = subprocess.Popen(
                [py_spy, "record", "--pid", str(bridge.pid), "--duration", str(int(seconds)), "--rate", "200",
                 "--format", "raw", "--output", str(raw), "--nonblocking", "--gil", *(["--native"] if native else [])],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )
        t0, bridge0 = time.monotonic(), cpu_times(bridge.pid)
        generators0, wakeups0 = generators.cpu_seconds(), wakeups(bridge.pid)
        steal0, waited0 = steal_ticks(bridge_cpu), run_queue_wait_s(bridge.pid)
        time.sleep(seconds)
        t1, bridge1 = time.monotonic(), cpu_times(bridge.pid)
        generators1, wakeups1 = generators.cpu_seconds(), wakeups(bridge.pid)
        steal = (steal_ticks(bridge_cpu) - steal0) / os.sysconf("SC_CLK_TCK") / (t1 - t0)
        waited = run_queue_wait_s(bridge.pid) - waited0
        if steal > 0.01:
            notes.append(f"the hypervisor stole {100 * steal:.0f} % of the bridge's CPU: figures are noisy")
        if waited > 0.001 * seconds:
            notes.append(f"the bridge waited {1000 * waited:.0f} ms in all for a CPU it was ready to use")
        rss = rss_bytes(bridge.pid)
        census = tcp_nodelay_census(bridge.pid)
        callers, sessions, generator_late = generators.stop(1.0)
        late_in_window = [by for at, by in generator_late if t0 <= at < t1]
        if late_in_window:
            notes.append(
                f"the generators' own loops ran over {1000 * LATE_REPORTED_S:g} ms late {len(late_in_window)} times, "
                f"worst {1000 * max(late_in_window):.1f} ms: the latency figures include it"
            )
        if profiler is not None:
            profiler.wait(30)
            notes.append(f"profile: {raw}")

    up: list[np.ndarray] = []
    down: list[np.ndarray] = []
    up_lost = down_lost = lossy = 0
    matched_up = matched_down = 0
    for tag in range(calls):
        caller, model = callers.get(tag), sessions.get(tag)
        if caller is None or model is None:
            notes.append(f"call {tag}: no {'stand-in session' if model is None else 'media socket'}")
            lossy += 1
            continue
        frames_at = np.frombuffer(caller.frames_at, np.float64)
        frames_due = (ulaw_bytes_due_array if flavour.model_ulaw else pcm_bytes_due_array)(len(frames_at))
        appends_at = np.frombuffer(model.appends_at, np.float64)
        append_total = np.frombuffer(model.append_total, np.int64)
        window = (frames_at >= t0) & (frames_at < t1)
        lat = match_latencies(frames_at[window], frames_due[window], appends_at, append_total)
        up.append(lat)
        matched_up += len(lat)
        deltas_at = np.frombuffer(model.deltas_at, np.float64)
        deltas_due = np.frombuffer(model.deltas_due, np.int64)
        audio_at = np.frombuffer(caller.audio_at, np.float64)
        audio_total = np.frombuffer(caller.audio_total, np.int64)
        window = (deltas_at >= t0) & (deltas_at < t1)
        lat = match_latencies(deltas_at[window], deltas_due[window], audio_at, audio_total)
        down.append(lat)
        matched_down += len(lat)
        up_gap = (int(frames_due[-1]) if len(frames_due) else 0) - (int(append_total[-1]) if len(append_total) else 0)
        down_gap = model.ulaw_expected - (int(audio_total[-1]) if len(audio_total) else 0)
        up_lost += abs(up_gap)
        down_lost += abs(down_gap)
        lossy += bool(up_gap or down_gap)
        if not (caller.nodelay and model.nodelay):
            notes.append(f"call {tag}: a generator socket without TCP_NODELAY")
    up_all = np.concatenate(up) if up else np.zeros(0)
    down_all = np.concatenate(down) if down else np.zeros(0)
    window_s = t1 - t0
    cpu = sum(bridge1) - sum(bridge0)
    return Result(
        flavour=flavour.name,
        workload=workload,
        calls=calls,
        cpu_ms_per_call_s=1000.0 * cpu / (calls * window_s),
        cpu_core_pct=100.0 * cpu / window_s,
        kernel_pct=100.0 * (bridge1[1] - bridge0[1]) / cpu if cpu else 0.0,
        rss_mb_per_call=(rss - rss_idle) / calls / 2**20,
        wakeups_per_call_s=(wakeups1 - wakeups0) / (calls * window_s),
        up_p50=_percentile(up_all, 50), up_p99=_percentile(up_all, 99),
        down_p50=_percentile(down_all, 50), down_p99=_percentile(down_all, 99),
        up_lost=up_lost, down_lost=down_lost, calls_lossy=lossy,
        generator_pct=100.0 * (generators1 - generators0) / window_s,
        nodelay="n/a" if census is None else f"{census[0]}/{census[1]}",
        matched=(matched_up, matched_down),
        notes=notes,
    )


# ----------------------------------------------------------------------------- report


def same_round_ratios(results: list[Result], reference: str) -> str:
    """Each flavour's CPU against `reference`'s measured in the same round, as medians over the rounds.

    The machine's speed drifts over minutes (the hypervisor's steal, its neighbours), and a relay
    that saturates its core cannot show a slower machine while the bridge does: only a ratio
    whose two figures were taken minutes apart means anything.
    """
    by_round = {(r.round, r.calls, r.workload, r.flavour): r for r in results}
    lines = [
        f"| bridge | deltas ms | calls | rounds | CPU / {reference}, median (range) | CPU ms per call-s, median "
        "| p99 ms each way, median |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    rounds = sorted({r.round for r in results})
    groups = sorted({(r.calls, r.workload, r.flavour) for r in results if r.flavour != reference})
    for calls, workload, flavour in groups:
        both = [((n, calls, workload, flavour), (n, calls, workload, reference)) for n in rounds]
        paired = [(by_round[mine], by_round[theirs]) for mine, theirs in both if mine in by_round and theirs in by_round]
        if not paired:
            continue
        ratios = [r.cpu_ms_per_call_s / ref.cpu_ms_per_call_s for r, ref in paired]
        deltas = "20-100" if workload == "mixed" else workload
        lines.append(
            f"| {flavour} | {deltas} | {calls} | {len(paired)} | {np.median(ratios):.2f}x ({min(ratios):.2f}-{max(ratios):.2f}) "
            f"| {np.median([r.cpu_ms_per_call_s for r, _ in paired]):.2f} "
            f"| {np.median([r.up_p99 for r, _ in paired]):.1f} / {np.median([r.down_p99 for r, _ in paired]):.1f} |"
        )
    return "\n".join(lines)


HEADER = (
    "| bridge | deltas ms | calls | CPU ms per call-s | bridge core (kernel share) | RSS MB per call | wakeups per call-s "
    "| caller->model p50 / p99 ms | model->caller p50 / p99 ms | audio lost (bytes up / down) | generator core | TCP_NODELAY |\n"
    "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
)


def row(result: Result) -> str:
    return (
        f"| {result.flavour} | {'20-100' if result.workload == 'mixed' else result.workload} | {result.calls} "
        f"| {result.cpu_ms_per_call_s:.2f} "
        f"| {result.cpu_core_pct:.0f} % ({result.kernel_pct:.0f} %) "
        f"| {result.rss_mb_per_call:.3f} | {result.wakeups_per_call_s:.0f} | {result.up_p50:.1f} / {result.up_p99:.1f} "
        f"| {result.down_p50:.1f} / {result.down_p99:.1f} | {result.up_lost} / {result.down_lost} "
        f"| {result.generator_pct:.0f} % | {result.nodelay} |"
    )


def _component(frame: str) -> str:
    """What a py-spy frame belongs to: a module of the bridge, else a package (asyncio, websockets, ...)."""
    match = re.search(r"\((.*?):\d+\)$", frame)
    if match is None:
        return "native code"
    folder, _, name = match.group(1).rpartition("/")
    if folder.startswith("telephony_bridge"):
        return match.group(1)
    return folder.split("/")[0] if folder else name


def summarise_profile(path: Path, top: int = 15) -> str:
    """Self time per function and per component from py-spy's raw (collapsed) output."""
    own: dict[str, int] = {}
    components: dict[str, int] = {}
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not count_text.isdigit() or not stack:
            continue
        count = int(count_text)
        total += count
        leaf = stack.split(";")[-1]
        name = re.sub(r" \((.*/)?([^/]+\.py):\d+\)", r" (\2)", leaf)
        own[name] = own.get(name, 0) + count
        components[_component(leaf)] = components.get(_component(leaf), 0) + count
    if not total:
        return f"{path.name}: no samples"
    lines = [f"{path.name}: {total} samples holding the GIL; self time", "  by function:"]
    for name, count in sorted(own.items(), key=lambda kv: -kv[1])[:top]:
        lines.append(f"  {100 * count / total:5.1f} %  {name[:100]}")
    lines.append("  by component:")
    for name, count in sorted(components.items(), key=lambda kv: -kv[1])[:top]:
        lines.append(f"  {100 * count / total:5.1f} %  {name}")
    return "\n".join(lines)


def _workloads(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",")]
    unknown = [name for name in names if name not in WORKLOADS]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown workload {', '.join(unknown)}: choose from {', '.join(WORKLOADS)}")
    return names


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", default="10,50,100,200", help="comma-separated concurrent call counts")
    parser.add_argument("--seconds", type=float, default=20.0, help="measured window per count")
    parser.add_argument("--talk", type=float, default=0.5, help="share of the time the model is talking")
    parser.add_argument("--period", type=float, default=4.0, help="seconds from one model answer to the next")
    parser.add_argument("--generators", type=int, default=1, help="load generator processes (all on the generator core)")
    parser.add_argument(
        "--baseline", metavar="REV|DIR",
        help="also run git revision REV's bridge (or the package in DIR/telephony_bridge), before this tree's",
    )
    parser.add_argument("--only-baseline", action="store_true", help="with --baseline: run REV's bridge only")
    parser.add_argument("--profile", type=Path, metavar="DIR", help="py-spy each bridge during its window, raw output to DIR")
    parser.add_argument("--native", action="store_true", help="with --profile: include native (C) frames")
    parser.add_argument(
        "--bridge-command", metavar="CMD",
        help="run this command (split on spaces; 'serve --host H --port P' is appended) instead of the tree's telephony-bridge",
    )
    parser.add_argument(
        "--baseline-relay", action="store_true",
        help="also run scripts/baseline_relay.py (Twilio's sample relay, mu-law passthrough), before the bridge",
    )
    parser.add_argument(
        "--pcmu", action="store_true", help='also run this tree with audio_format = "pcmu" (mu-law to the model, no conversion)'
    )
    parser.add_argument(
        "--deltas-ms", default="mixed,20", type=_workloads,
        help="comma-separated workloads: 'mixed' (model deltas of 20-100 ms) and/or '20' (20 ms deltas at real-time pace)",
    )
    parser.add_argument(
        "--repeat", type=int, default=1,
        help="measure everything N times, the flavours' order reversed every other round, and print each flavour's "
             "medians of its ratio to the first flavour (the relay, with --baseline-relay) within the same round",
    )
    parser.add_argument("--bridge-cpu", type=int, default=0)
    parser.add_argument("--generator-cpu", type=int, default=1)
    args = parser.parse_args()

    counts = [int(n) for n in args.calls.split(",")]
    usable = os.sched_getaffinity(0)
    if {args.bridge_cpu, args.generator_cpu} <= usable and args.bridge_cpu != args.generator_cpu:
        bridge_cpu, generator_cpu = args.bridge_cpu, args.generator_cpu
        os.sched_setaffinity(0, {generator_cpu})
        pinning = f"bridge on CPU {bridge_cpu}, generators on CPU {generator_cpu}"
    else:
        bridge_cpu = generator_cpu = None
        pinning = "NOT pinned (fewer than two usable CPUs): bridge and generators share cores"
    print(
        f"{len(counts)} counts x {args.seconds:g} s; model talking {100 * args.talk:.0f} % of the time in "
        f"answers of {args.talk * args.period:g} s, workloads {', '.join(args.deltas_ms)}; {pinning}; "
        f"load average {os.getloadavg()[0]:.2f}",
        flush=True,
    )
    with tempfile.TemporaryDirectory(prefix="bench-calls-") as scratch:
        workdir = Path(scratch)
        config = workdir / "bridge.toml"
        _write_config(config, max(counts))
        flavours = [] if args.only_baseline else [working_tree_flavour()]
        if args.bridge_command:
            command = args.bridge_command.split()
            flavours = [Flavour(command[-1].rpartition("/")[2], command, os.environ.get("PYTHONPATH"))]
        if args.baseline:
            flavours.insert(0, baseline_flavour(args.baseline, workdir))
        if args.pcmu:
            pcmu_config = workdir / "bridge-pcmu.toml"
            _write_config(pcmu_config, max(counts), "pcmu")
            tree = working_tree_flavour()
            flavours.append(Flavour("this tree, pcmu", tree.command, tree.pythonpath, model_ulaw=True, config=pcmu_config))
        if args.baseline_relay:
            flavours.insert(0, baseline_relay_flavour())
        standin_port = _free_port()
        generators = Generators(args.generators, generator_cpu, standin_port, args.talk, args.period)
        results: list[Result] = []
        try:
            for round_no, calls, workload in itertools.product(range(args.repeat), counts, args.deltas_ms):
                # Odd rounds run the flavours in reverse, so a machine that drifts favours none of them.
                for flavour in flavours if round_no % 2 == 0 else flavours[::-1]:
                    label = f"{flavour.name}, {calls} calls, deltas {workload}"
                    try:
                        result = measure(
                            flavour, calls, args.seconds, generators, standin_port, config, bridge_cpu, args.profile,
                            args.native, workload,
                        )
                    except RuntimeError as error:  # one failed ramp costs one row, not the run
                        print(f"  {label}: FAILED: {error}", flush=True)
                        generators.close()
                        generators = Generators(args.generators, generator_cpu, standin_port, args.talk, args.period)
                        continue
                    result.round = round_no
                    results.append(result)
                    print(
                        f"  {label}: {result.cpu_ms_per_call_s:.2f} ms CPU per call-s, "
                        f"p99 {result.up_p99:.1f} / {result.down_p99:.1f} ms, matched {result.matched[0]} frames "
                        f"/ {result.matched[1]} deltas, {result.calls_lossy} calls with a gap"
                        + "".join(f"\n    {note}" for note in result.notes[:5]),
                        flush=True,
                    )
        finally:
            generators.close()
    print()
    print(HEADER)
    for result in results:
        print(row(result))
    if args.repeat > 1 and len(flavours) > 1:
        print()
        print(same_round_ratios(results, flavours[0].name))
    if args.profile:
        for path in sorted(args.profile.glob("*.txt")):
            print()
            print(summarise_profile(path))


if __name__ == "__main__":
    main()
