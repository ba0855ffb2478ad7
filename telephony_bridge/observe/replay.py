"""Replay a recorded call through the current bridge and report what the bridge now does differently.

The real app runs under uvicorn on loopback. The replay answers for both services the bridge
talks to: it POSTs the signed webhook the recording's header describes, then plays Twilio from
the recorded `twilio>bridge` frames and a scripted Realtime service from the recorded
`realtime>bridge` frames, and records what the bridge sends on both sockets. Twilio's REST API is a
scripted stand-in too (`TWILIO_API_URL`): each request the bridge makes gets the next answer the
recording holds, in order, and the requests themselves are compared. Where the recording
shows the service closing or dropping the session (version 2), the scripted service does so too, with
the recorded close code; the frames after the bridge's next session opens go to that session.

Each recorded incoming frame is sent at its recorded time, and not before the bridge has sent, on
both sockets, at least as many messages of each type as the recording shows before it. That keeps
cause before effect: a flushed mark's echo never overtakes the `clear` that flushed it, a
`speech_started` finds the bridge in the state it was in. The scripted Twilio plays what the
bridge sends now through `TwilioPlayback`, so each recorded mark echo carries the name of the mark
Twilio owes the bridge now, oldest first; the `start` carries a fresh stream token.

Time is replayed faithfully only where the bridge reads the clock: while the caller is hearing the
model with marks pending (the truncate point of a barge-in is computed from mark echo times), and
across gaps over `LONG_GAP_MS` (a silent stream is something the bridge reacts to). Elsewhere
(the caller talking, the model generating) the recording runs `FAST_FORWARD` times faster.

What is compared (docs/recording-format.md): on each socket, the bridge's messages in order, with
ids, event ids, mark names and stream ids normalised; its REST requests (method, path, parameters,
with account and call SIDs and transfer ids normalised); audio lengths exactly and audio content
within `AUDIO_TOLERANCE`; truncate points within `TRUNCATE_TOLERANCE_MS`. The caller's audio
forwarded to the service is compared as one stream, apart from the other events, because where
an append falls between two events depends on packet timing, not on the bridge.
"""

from __future__ import annotations

import asyncio
import audioop
import bisect
import difflib
import json
import re
import secrets
from collections import Counter, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import partial
from itertools import pairwise
from typing import Any, Final
from urllib.parse import parse_qsl
from xml.etree import ElementTree

import httpx
import numpy as np
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from twilio.request_validator import RequestValidator
from websockets.asyncio.client import ClientConnection, connect
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.protocol import State

from telephony_bridge.call.pump import Direction
from telephony_bridge.config import BridgeConfig, CallLogSettings, CallProfile, settings_from_env
from telephony_bridge.observe.recording import RealtimeSocketChange, RecordedCall, RecordedFrame
from telephony_bridge.outbound.placing import OutboundRefused, OutboundRequest
from telephony_bridge.testing.bridge_server import serve_app
from telephony_bridge.testing.tool_server import ToolReply, ToolServer
from telephony_bridge.testing.twilio_playback import TwilioPlayback
from telephony_bridge.testing.twilio_simulator import SimulatedCall
from telephony_bridge.wire import PCM24K_BYTES_PER_MS, pcm24k_ms, ulaw_ms

FAST_FORWARD = 10.0
"""How much faster than real time the recording runs where the bridge does not read the clock."""
LONG_GAP_MS = 250.0
"""Silences on the sockets longer than this keep their length: twelve missed 20 ms media frames are an event."""
WINDOW_MARGIN_MS = 50.0
GATE_TIMEOUT_S = 1.0
"""How long an incoming frame waits for the bridge to send what preceded it in the recording."""
SETTLE_S = 0.3
"""After the last recorded frame, how long to watch for messages the bridge sends that it did not before."""
MAX_SETTLE_S = 2.0
TRUNCATE_TOLERANCE_MS = 20
"""Scheduling on a busy machine moves echoes and `speech_started` by a few ms; 20 ms is one media frame."""
AUDIO_TOLERANCE = 0.01
"""Audio may differ by up to 1% RMS of the recorded signal (-40 dB): a 1-LSB resampler difference passes,
any change a caller could hear does not."""
AUDIO_TOLERANCE_FLOOR = 8.0
"""...or by this RMS in 16-bit units, for near-silent audio."""

PUBLIC_URL = "https://replay.invalid"
_ID_KEYS = frozenset({"id", "item_id", "response_id", "previous_item_id", "call_id", "conversation_id"})
_DROPPED_KEYS = frozenset({"event_id", "streamSid"})
_AUDIO_KEYS = {"bridge>twilio": ("media", "payload"), "bridge>realtime": (None, "audio")}
_TOLERANT_KEYS = frozenset({"audio_end_ms"})
_TWILIO_SIDE = ("twilio>bridge", "bridge>twilio")
_REST: Final = "twilio-rest"
_CALLBACK: Final = "twilio-callback"
REPLAY_ACCOUNT_SID = "AC" + "0" * 32
"""The account a replayed outbound call is placed from (placing needs one; the scripted REST API takes any)."""
_REST_IDS = (
    (re.compile(r"/Accounts/AC[0-9a-fA-F]{32}"), "/Accounts/<account>"),
    (re.compile(r"/Calls/CA[0-9a-fA-F]{32}"), "/Calls/<call>"),
    (re.compile(r"transfer=[A-Za-z0-9_-]+"), "transfer=<transfer id>"),
)
"""What differs between two runs of one REST request: the account (a replay's caller is a new one), and the
single-use transfer id in a `<Dial>`'s URLs. The call SID is the recording's, normalised all the same."""
_UNSENDABLE_CLOSE_CODES = frozenset({1005, 1006, 1015})
"""Codes that only describe a close (no code sent, no close frame, TLS failure); replayed as a dropped connection."""


@dataclass
class ReplayResult:
    recording: RecordedCall
    replayed: list[RecordedFrame]
    """What the bridge sent this time, stamped on the recording's timeline."""
    differences: list[str] = field(default_factory=list)
    wall_s: float = 0.0

    @property
    def same(self) -> bool:
        return not self.differences

    def report(self) -> str:
        dialled = self.recording.outbound
        call = (f"outbound call {self.recording.call_sid} from {self.recording.called_number} to {dialled.callee}"
                if dialled is not None else f"call {self.recording.call_sid} to {self.recording.called_number}")
        head = (
            f"replayed {self.recording.path} ({call}, "
            f"{self.recording.dialect} dialect, {self.recording.duration_ms / 1000:.1f} s recorded) in {self.wall_s:.1f} s"
        )
        if self.recording.cut is not None:
            cut = self.recording.cut
            head += f"\nthe recording was cut at {cut.t_ms / 1000:.1f} s ({cut.reason}): the call went on unrecorded"
        if self.same:
            sent = Counter(frame.direction for frame in self.replayed)
            rest = f", and {sent[_REST]} REST request(s) to Twilio" if sent[_REST] else ""
            return (
                f"{head}\nthe bridge behaves as recorded: {sent['bridge>twilio']} messages to Twilio and "
                f"{sent['bridge>realtime']} to the Realtime service{rest} match."
            )
        count = len(self.differences)
        verdict = f"{count} difference{'s' * (count != 1)}: the call does not replay as recorded."
        return "\n".join([head, *self.differences, verdict])


async def replay(call: RecordedCall, *, gate_timeout_s: float = GATE_TIMEOUT_S) -> ReplayResult:
    """Run the current bridge against `call` and compare what it sends with what it sent then."""
    profile = call.profile().model_copy(update={"record": False, "after_call": None})
    auth_token = secrets.token_urlsafe(24)
    script = _Script(call, gate_timeout_s)
    tools = ToolServer(script.tool_reply)
    await tools.__aenter__()
    profile = profile.model_copy(update={"tools": [
        tool.model_copy(update={"url": tools.url(f"/{tool.name}")}) for tool in profile.tools
    ]})
    service = _ScriptedRealtime(script)
    await service.start()
    rest = _ScriptedRest(script)
    await rest.start()
    dialled = call.outbound
    settings = settings_from_env(
        {
            "PUBLIC_URL": PUBLIC_URL,
            "TWILIO_AUTH_TOKEN": auth_token,
            "TWILIO_API_URL": rest.url,
            "TWILIO_ACCOUNT_SID": REPLAY_ACCOUNT_SID if dialled is not None else "",
            "OPENAI_API_KEY": "sk-replay-" + secrets.token_urlsafe(12),
            "REALTIME_URL": service.url,
            "REALTIME_API": call.dialect,
        }
    )
    if dialled is not None:
        profile = _escaped(profile)
    config = BridgeConfig(
        defaults=profile, numbers={call.called_number: profile}, call_log=CallLogSettings(path=""), source=str(call.path)
    )
    loop = asyncio.get_running_loop()
    try:
        async with serve_app(settings, config) as (bridge_url, app):
            started = loop.time()
            script.begin(started)
            if dialled is None:
                caller = SimulatedCall(
                    bridge_url=bridge_url, public_url=PUBLIC_URL, auth_token=auth_token,
                    call_sid=call.call_sid, to_number=call.called_number,
                )
                response = await caller.dial()
                if caller.stream_url is None:
                    return ReplayResult(call, [], [f"webhook: the bridge answered HTTP {response.status_code} without a stream"])
                twilio = _ScriptedTwilio(script, bridge_url, caller.stream_url, auth_token, caller.parameters)
            else:
                try:
                    await app.state.outbound.place(OutboundRequest(call.called_number, dialled.callee, dialled.context))
                except OutboundRefused as refused:
                    return ReplayResult(call, [], [f"placing the call: the bridge refused it ({refused.reason})"])
                placed = _placed_stream(rest.created)
                if placed is None:
                    return ReplayResult(call, [], ["placing the call: the bridge's create request holds no <Connect><Stream>"])
                stream_url, parameters = placed
                callbacks = {"amd": rest.created.get("AsyncAmdStatusCallback", "")}
                twilio = _ScriptedTwilio(script, bridge_url, stream_url, auth_token, parameters, callbacks)
            try:
                await script.run(twilio, service)
            finally:
                await twilio.close()
                await service.close_connections()
        wall_s = loop.time() - started
    finally:
        await service.stop()
        await tools.__aexit__(None, None, None)
        await rest.stop()
    result = ReplayResult(call, script.observed, script.problems, wall_s)
    result.differences += compare(call.frames, script.observed)
    made = [(request.path.strip("/"), request.json.get("arguments")) for request in tools.requests]
    if made != script.tool_requests:
        result.differences.append(f"tool requests: recorded {script.tool_requests}, replayed {made}")
    return result


class _Script:
    """The recording as a schedule: when each incoming frame goes out, and what must come first."""

    def __init__(self, call: RecordedCall, gate_timeout_s: float) -> None:
        self.call = call
        self._gate_timeout_s = gate_timeout_s
        self.observed: list[RecordedFrame] = []
        self.problems: list[str] = []
        self._sent = Counter[tuple[str, str]]()
        self._changed = asyncio.Event()
        self._started = 0.0
        self._breaks = _time_warp(call.frames)
        self.recorded_marks: set[str] = set()
        """Names of the marks the bridge sent in the recording: an echo of any other is replayed as is."""
        self._steps: list[tuple[RecordedFrame | RealtimeSocketChange, float, dict[tuple[str, str], int]]] = []
        before = Counter[tuple[str, str]]()
        self.tool_requests: list[tuple[str, Any]] = []
        """The recorded tool requests, (name, arguments) in order: the replay must make the same."""
        self.tool_answers: dict[str, deque[dict[str, Any]]] = {}
        """The recorded answers per tool, served again in order."""
        self.rest_answers: deque[RecordedFrame] = deque()
        """What Twilio answered the bridge's REST requests, in order: the stand-in gives them out again."""
        for frame in call.timeline():
            if isinstance(frame, RecordedFrame) and frame.direction == "tools":
                self._tool_line(frame.message)
            elif isinstance(frame, RealtimeSocketChange):
                self._steps.append((frame, self._replay_ms(frame.t_ms), dict(before)))
            elif frame.direction == _REST:
                if frame.kind == "request":
                    before[(_REST, frame.kind)] += 1
                else:
                    self.rest_answers.append(frame)
            elif frame.direction.startswith("bridge>"):
                if frame.direction == "bridge>twilio" and frame.kind == "mark":
                    self.recorded_marks.add(_mark_name(frame.message))
                before[(frame.direction, frame.kind)] += 1
            else:
                self._steps.append((frame, self._replay_ms(frame.t_ms), dict(before)))
        self._totals = dict(before)

    def _tool_line(self, message: Any) -> None:
        if not isinstance(message, dict):
            return
        if message.get("kind") == "request":
            self.tool_requests.append((str(message.get("tool")), message.get("arguments")))
        elif message.get("kind") == "answer":
            self.tool_answers.setdefault(str(message.get("tool")), deque()).append(message)

    def tool_reply(self, path: str, body: Any) -> ToolReply:
        """The recorded answer to the replayed bridge's next request to a tool (a 404 past the recording's)."""
        answers = self.tool_answers.get(path.strip("/"))
        if not answers:
            return ToolReply(status=404, body={"error": "the recording has no more answers for this tool"})
        answer = answers.popleft()
        if answer.get("outcome") == "ok":
            return ToolReply(body=str(answer.get("output", "{}")).encode("utf-8"))
        return ToolReply(status=int(answer.get("status") or 502), body=str(answer.get("output", "")).encode("utf-8"))

    def begin(self, started: float) -> None:
        self._started = started

    def _replay_ms(self, t_ms: float) -> float:
        return _interpolate(self._breaks, 0, 1, t_ms)

    def recorded_ms(self, replay_ms: float) -> float:
        return _interpolate(self._breaks, 1, 0, replay_ms)

    def saw(self, direction: Direction, frame: str | bytes) -> RecordedFrame:
        """A frame the bridge sent on one of the sockets."""
        loop_ms = (asyncio.get_running_loop().time() - self._started) * 1000.0
        observed = _as_frame(self.recorded_ms(loop_ms), direction, frame)
        self.observed.append(observed)
        self._sent[(direction, observed.kind)] += 1
        self._changed.set()
        return observed

    def saw_close(self) -> None:
        """A socket opened or closed: whoever waits on the bridge looks again."""
        self._changed.set()

    async def wait_for(self, ready: Callable[[], bool]) -> bool:
        """Whether `ready()` came true within the gate timeout."""
        try:
            async with asyncio.timeout(self._gate_timeout_s):
                while True:
                    self._changed.clear()
                    if ready():
                        return True
                    await self._changed.wait()
        except TimeoutError:
            return False

    async def run(self, twilio: _ScriptedTwilio, service: _ScriptedRealtime) -> None:
        loop = asyncio.get_running_loop()
        gating = True
        sessions = 0
        for frame, at_ms, needs in self._steps:
            delay = self._started + at_ms / 1000.0 - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            if gating and not await self.wait_for(partial(self._has_sent, needs)):
                gating = False
                self._missed(needs, frame)
            if isinstance(frame, RealtimeSocketChange):
                if frame.state == "closed":
                    await service.drop(frame.code)
                    continue
                sessions += 1
                if not await self.wait_for(partial(service.has_opened, sessions)):
                    self.problems.append(
                        f"realtime session: the bridge did not open session #{sessions} within {self._gate_timeout_s:g} s "
                        f"of when it did in the recording (t={frame.t_ms:.0f} ms)"
                    )
            elif frame.direction == "realtime>bridge":
                await service.send(frame.wire_frame())
            elif frame.direction == _CALLBACK:
                await twilio.callback(frame)
            else:
                await twilio.send(frame)
        if gating and not await self.wait_for(lambda: self._has_sent(self._totals)):
            self._missed(self._totals, None)
        await self._until_quiet(twilio, service)

    def _has_sent(self, needs: dict[tuple[str, str], int]) -> bool:
        return all(self._sent[key] >= count for key, count in needs.items())

    def _missed(self, needs: dict[tuple[str, str], int], frame: RecordedFrame | RealtimeSocketChange | None) -> None:
        missing = ", ".join(
            f"{kind} #{count} to {direction.partition('>')[2].title()} (sent {self._sent[(direction, kind)]})"
            for (direction, kind), count in needs.items()
            if self._sent[(direction, kind)] < count
        )
        if isinstance(frame, RealtimeSocketChange):
            what = f"before the Realtime session {'opened' if frame.state == 'open' else 'was lost'} at t={frame.t_ms:.0f} ms"
        elif frame is not None:
            what = f"before {frame.direction} {frame.kind} at t={frame.t_ms:.0f} ms"
        else:
            what = "by the end"
        self.problems.append(
            f"timing: the bridge did not send {missing} {what} within {self._gate_timeout_s:g} s of when it did in the recording;"
            " from here on frames go out at their recorded times only"
        )

    async def _until_quiet(self, twilio: _ScriptedTwilio, service: _ScriptedRealtime) -> None:
        """Watch for late extra messages until the bridge has closed both sockets or been quiet for `SETTLE_S`."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + MAX_SETTLE_S
        while not (twilio.closed and service.closed) and loop.time() < deadline:
            self._changed.clear()
            try:
                async with asyncio.timeout(SETTLE_S):
                    await self._changed.wait()
            except TimeoutError:
                return


class _ScriptedTwilio:
    """The media socket, as Twilio opens it: signed over the public wss URL, `connected` first."""

    def __init__(
        self, script: _Script, bridge_url: str, stream_url: str, auth_token: str, parameters: dict[str, str],
        callbacks: dict[str, str] | None = None,
    ) -> None:
        self._script = script
        self._bridge_url = bridge_url
        self._target = bridge_url.replace("http://", "ws://", 1) + "/twilio/media"
        self._validator = RequestValidator(auth_token)
        self._signature = self._validator.compute_signature(stream_url, {})
        self._callbacks = callbacks or {}
        """The callback URLs the bridge gave Twilio for this call (public), by the recorded callback `kind`."""
        self._parameters = parameters
        self._ws: ClientConnection | None = None
        self._reader: asyncio.Task[None] | None = None
        self._playback = TwilioPlayback()
        self._owed: deque[str] = deque()
        """Marks Twilio has echoed by its own clock, waiting for the recorded echo that sends them."""
        self.closed = False

    async def send(self, frame: RecordedFrame) -> None:
        if self._ws is None:
            self._ws = await connect(
                self._target, additional_headers={"X-Twilio-Signature": self._signature},
                compression=None, max_size=None,
            )
            self._reader = asyncio.get_running_loop().create_task(self._read(self._ws))
            await self._send_quietly(json.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"}))
        await self._send_quietly(self._rewrite(frame))

    async def callback(self, frame: RecordedFrame) -> None:
        """A recorded callback (AMD's result), posted signed to the URL the bridge gave for it, as Twilio posts it."""
        url = self._callbacks.get(frame.kind, "")
        if not url.startswith(PUBLIC_URL):
            self._script.problems.append(
                f"callback: the recording has a {frame.kind} callback at t={frame.t_ms:.0f} ms, but the bridge gave no URL for it"
            )
            return
        params = {**(frame.message.get("params") or {}), "CallSid": self._script.call.call_sid}
        target = self._bridge_url + url.removeprefix(PUBLIC_URL)
        headers = {"X-Twilio-Signature": self._validator.compute_signature(url, params)}
        async with httpx.AsyncClient() as client:
            answer = await client.post(target, data=params, headers=headers)
        if answer.status_code >= 300:
            self._script.problems.append(
                f"callback: the bridge answered the {frame.kind} callback with HTTP {answer.status_code}"
            )

    def _rewrite(self, frame: RecordedFrame) -> str | bytes:
        message = frame.message
        if frame.kind == "start" and isinstance(message.get("start"), dict):
            start = dict(message["start"])
            start["customParameters"] = {**(start.get("customParameters") or {}), **self._parameters}
            return json.dumps({**message, "start": start})
        if frame.kind == "mark" and isinstance(message.get("mark"), dict):
            name = self._echo_name(_mark_name(message))
            return json.dumps({**message, "mark": {**message["mark"], "name": name}})
        return frame.wire_frame()

    def _echo_name(self, recorded: str) -> str:
        """The mark a recorded echo answers now: Twilio echoes in order, so the oldest one owed.

        The recorded echo says the audio before its mark has played; the replay's clock runs
        faster in places, so the playback is moved on to that point when it is not there yet.
        """
        if recorded not in self._script.recorded_marks:
            return recorded
        if not self._owed:
            due = self._playback.next_mark_at()
            if due is not None:
                now = asyncio.get_running_loop().time()
                self._owed.extend(echo.name for echo in self._playback.advance(max(now, due)))
        return self._owed.popleft() if self._owed else recorded

    def _play(self, sent: RecordedFrame) -> None:
        """What the bridge sent, played as Twilio would."""
        now = asyncio.get_running_loop().time()
        if sent.kind == "media":
            echoes = self._playback.media(now, sent.audio() or b"")
        elif sent.kind == "mark":
            echoes = self._playback.mark(now, _mark_name(sent.message))
        elif sent.kind == "clear":
            echoes = self._playback.clear(now)
        else:
            return
        self._owed.extend(echo.name for echo in echoes)

    async def _send_quietly(self, data: str | bytes) -> None:
        assert self._ws is not None
        try:
            await self._ws.send(data)
        except ConnectionClosed:
            pass

    async def _read(self, ws: ClientConnection) -> None:
        try:
            async for frame in ws:
                self._play(self._script.saw("bridge>twilio", frame))
        except ConnectionClosed:
            pass
        self.closed = True
        self._script.saw_close()

    async def close(self) -> None:
        if self._ws is not None:
            await self._ws.close()
        if self._reader is not None:
            await self._reader
        self.closed = True


class _ScriptedRest:
    """Twilio's REST API as the recording shows it: any request gets the next recorded answer.

    A request past the recorded answers (the bridge asks more than it did) gets 404 code 20404, "the call
    is gone", which ends the bridge's part in it; the request itself shows up as a difference.
    """

    def __init__(self, script: _Script) -> None:
        self._script = script
        self._server: uvicorn.Server | None = None
        self._task: asyncio.Task[None] | None = None
        self.url = ""
        self.created: dict[str, str] = {}
        """The form of the bridge's create request (`Calls.json`), when it places the recorded call."""

    async def start(self) -> None:
        app = Starlette(routes=[Route("/{path:path}", self._answer, methods=["GET", "POST"])])
        self._server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, lifespan="off", log_level="warning"))
        self._task = asyncio.get_running_loop().create_task(self._server.serve(), name="replay-twilio-rest")
        while not self._server.started:
            if self._task.done():
                self._task.result()
            await asyncio.sleep(0.01)
        self.url = f"http://127.0.0.1:{self._server.servers[0].sockets[0].getsockname()[1]}"

    async def _answer(self, request: Request) -> Response:
        body = (await request.body()).decode("utf-8", "replace") if request.method == "POST" else ""
        params = dict(parse_qsl(body, keep_blank_values=True)) | dict(request.query_params)
        if request.method == "POST" and request.url.path.endswith("/Calls.json"):
            # Placing the call precedes its recording, which starts with its stream: it gets the recorded CallSid.
            self.created = params
            return JSONResponse({"sid": self._script.call.call_sid, "status": "queued"}, status_code=201)
        seen = {"kind": "request", "method": request.method, "path": request.url.path, "params": params}
        self._script.saw(_REST, json.dumps(seen))
        answers = self._script.rest_answers
        while answers and answers[0].kind != "response":
            answers.popleft()  # a try that got no answer: the retry that followed gets the next one
        if not answers:
            return JSONResponse({"code": 20404, "message": "not in the recording", "status": 404}, status_code=404)
        recorded = answers.popleft().message
        return JSONResponse(recorded.get("body"), status_code=int(recorded.get("status", 200)))

    async def stop(self) -> None:
        if self._server is not None and self._task is not None:
            self._server.should_exit = True
            await self._task
            self._server = None


class _ScriptedRealtime:
    """A Realtime service that says only what the recording shows it said, on the bridge's latest session."""

    def __init__(self, script: _Script) -> None:
        self._script = script
        self._server: Server | None = None
        self._sessions: list[ServerConnection] = []
        self.url = ""

    @property
    def closed(self) -> bool:
        return all(session.state is State.CLOSED for session in self._sessions)

    def has_opened(self, sessions: int) -> bool:
        return len(self._sessions) >= sessions

    async def start(self) -> None:
        self._server = await serve(self._serve, "127.0.0.1", 0, max_size=None, compression=None)
        port = self._server.sockets[0].getsockname()[1]
        self.url = f"ws://127.0.0.1:{port}/v1/realtime"

    async def _serve(self, session: ServerConnection) -> None:
        self._sessions.append(session)
        self._script.saw_close()
        try:
            async for frame in session:
                self._script.saw("bridge>realtime", frame)
        except ConnectionClosed:
            pass
        self._script.saw_close()

    async def send(self, frame: str | bytes) -> None:
        if not self._sessions and not await self._script.wait_for(lambda: bool(self._sessions)):
            return
        try:
            await self._sessions[-1].send(frame)
        except ConnectionClosed:
            pass

    async def drop(self, code: int | None) -> None:
        """End the current session from the service's side, as the recording shows: with `code`, or with no close frame."""
        if not self._sessions:
            return
        session = self._sessions[-1]
        if code is None or code in _UNSENDABLE_CLOSE_CODES:
            session.transport.abort()
            await session.wait_closed()
        else:
            await session.close(code, "closed as recorded")

    async def close_connections(self) -> None:
        for session in self._sessions:
            await session.close()

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


def _escaped(profile: CallProfile) -> CallProfile:
    """A placed call's recorded profile has its placeholders filled already: braces escaped, filling it again changes nothing."""

    def escape(text: str | None) -> str | None:
        return None if text is None else text.replace("{", "{{").replace("}", "}}")

    return profile.model_copy(update={
        "instructions": escape(profile.instructions), "greeting": escape(profile.greeting),
        "voicemail_message": escape(profile.voicemail_message),
    })


def _placed_stream(created: dict[str, str]) -> tuple[str, dict[str, str]] | None:
    """The stream URL and `<Parameter>`s of the inline TwiML a create request carries."""
    try:
        stream = ElementTree.fromstring(created.get("Twiml", "")).find("./Connect/Stream")
    except ElementTree.ParseError:
        return None
    if stream is None or not stream.get("url"):
        return None
    return str(stream.get("url")), {p.get("name", ""): p.get("value", "") for p in stream.findall("Parameter")}


def _mark_name(message: Any) -> str:
    mark = message.get("mark") if isinstance(message, dict) else None
    return str(mark.get("name")) if isinstance(mark, dict) else ""


def _as_frame(t_ms: float, direction: Direction, frame: str | bytes) -> RecordedFrame:
    if isinstance(frame, bytes):
        return RecordedFrame(t_ms, direction, None, frame)
    try:
        return RecordedFrame(t_ms, direction, json.loads(frame))
    except ValueError:
        return RecordedFrame(t_ms, direction, None, frame)


# The replay's clock: real time where the bridge reads the clock, fast-forward elsewhere.


def _listening_windows(frames: Iterable[RecordedFrame]) -> list[tuple[float, float]]:
    """Stretches of the call in which the caller hears the model with marks pending, widened by a margin."""
    windows: list[tuple[float, float]] = []
    pending: set[str] = set()
    opened: float | None = None
    unmarked = False
    last = 0.0
    for frame in frames:
        last = frame.t_ms
        if frame.direction == "bridge>twilio":
            if frame.kind == "media":
                opened = frame.t_ms if opened is None else opened
                unmarked = True
            elif frame.kind == "mark":
                pending.add(_mark_name(frame.message))
                unmarked = False
            elif frame.kind == "clear":
                pending.clear()
                unmarked = False
        elif frame.direction == "twilio>bridge" and frame.kind == "mark":
            pending.discard(_mark_name(frame.message))
        else:
            continue
        if opened is not None and not pending and not unmarked:
            windows.append((opened - WINDOW_MARGIN_MS, frame.t_ms + WINDOW_MARGIN_MS))
            opened = None
    if opened is not None:
        windows.append((opened - WINDOW_MARGIN_MS, last + WINDOW_MARGIN_MS))
    merged: list[tuple[float, float]] = []
    for start, end in windows:
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(end, merged[-1][1]))
        else:
            merged.append((start, end))
    return merged


def _time_warp(frames: list[RecordedFrame]) -> list[tuple[float, float]]:
    """Breakpoints (recorded ms, replay ms) of the replay's clock, increasing in both."""
    windows = _listening_windows(frames)
    starts = [start for start, _ in windows]
    times = sorted({0.0, *(frame.t_ms for frame in frames), *(edge for window in windows for edge in window if edge > 0)})
    breaks = [(times[0], 0.0)]
    for start, end in pairwise(times):
        middle = (start + end) / 2
        window = bisect.bisect_right(starts, middle) - 1
        real_time = end - start > LONG_GAP_MS or (window >= 0 and middle <= windows[window][1])
        breaks.append((end, breaks[-1][1] + (end - start) / (1.0 if real_time else FAST_FORWARD)))
    return breaks


def _interpolate(breaks: list[tuple[float, float]], source: int, target: int, value: float) -> float:
    keys = [point[source] for point in breaks]
    index = bisect.bisect_right(keys, value)
    if index == 0:
        return breaks[0][target] + value - keys[0]
    if index == len(breaks):
        return breaks[-1][target] + value - keys[-1]
    (a0, b0), (a1, b1) = (breaks[index - 1][source], breaks[index - 1][target]), (keys[index], breaks[index][target])
    return b0 if a1 == a0 else b0 + (value - a0) * (b1 - b0) / (a1 - a0)


# Comparing what the bridge sent then with what it sends now.


@dataclass(frozen=True)
class _Sent:
    frame: RecordedFrame
    key: str
    """The message normalised, with its audio as a length and its tolerant numbers left out: equal keys, same behaviour."""
    audio: bytes | None
    numbers: dict[str, float]


def compare(recorded: list[RecordedFrame], replayed: list[RecordedFrame]) -> list[str]:
    """The behavioural differences between two runs of a call, readable, one entry per difference."""
    differences: list[str] = []
    for direction in ("bridge>twilio", "bridge>realtime", _REST):
        before = _normalised(frame for frame in recorded if _sent_by_bridge(frame, direction))
        now = _normalised(frame for frame in replayed if _sent_by_bridge(frame, direction))
        differences += _compare_messages(
            direction, [s for s in before if not _is_append(s)], [s for s in now if not _is_append(s)]
        )
        if direction == "bridge>realtime":
            differences += _compare_caller_audio([s for s in before if _is_append(s)], [s for s in now if _is_append(s)])
    return differences


def _sent_by_bridge(frame: RecordedFrame, direction: str) -> bool:
    """A frame the bridge sent that way; on `twilio-rest`, its requests (Twilio's answers are the recording's own)."""
    return frame.direction == direction and (direction != _REST or frame.kind == "request")


def _rest_request(message: dict[str, Any]) -> dict[str, Any]:
    """A REST request with what differs from run to run (see `_REST_IDS`) replaced by placeholders."""

    def normal(text: str) -> str:
        for pattern, placeholder in _REST_IDS:
            text = pattern.sub(placeholder, text)
        return text

    params = message.get("params")
    return {
        **message,
        "path": normal(str(message.get("path", ""))),
        "params": {key: normal(str(value)) for key, value in params.items()} if isinstance(params, dict) else params,
    }


def _is_append(sent: _Sent) -> bool:
    return sent.frame.kind == "input_audio_buffer.append"


def _normalised(frames: Iterable[RecordedFrame]) -> list[_Sent]:
    ids: dict[str, str] = {}
    marks: dict[str, str] = {}
    result = []
    for frame in frames:
        if frame.message is None:
            raw = frame.raw if isinstance(frame.raw, str) else f"<{len(frame.raw or b'')} binary bytes>"
            result.append(_Sent(frame, f"raw {raw}", None, {}))
            continue
        audio = frame.audio()
        numbers: dict[str, float] = {}
        message = _rest_request(frame.message) if frame.direction == _REST and isinstance(frame.message, dict) else frame.message
        body = _normalise(message, ids, numbers)
        if frame.kind == "mark" and frame.direction == "bridge>twilio":
            body["mark"]["name"] = marks.setdefault(_mark_name(frame.message), f"<mark {len(marks) + 1}>")
        if audio is not None:
            container, key = _AUDIO_KEYS[frame.direction]
            holder = body[container] if container else body
            holder[key] = f"<{_audio_ms(frame.direction, audio):g} ms of audio>"
        result.append(_Sent(frame, json.dumps(body, sort_keys=True, separators=(",", ":")), audio, numbers))
    return result


def _normalise(value: Any, ids: dict[str, str], numbers: dict[str, float]) -> Any:
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            if key in _DROPPED_KEYS:
                continue
            if key in _TOLERANT_KEYS and isinstance(item, (int, float)):
                numbers[key] = float(item)
            elif key in _ID_KEYS and isinstance(item, str):
                out[key] = ids.setdefault(item, f"<id {len(ids) + 1}>")
            else:
                out[key] = _normalise(item, ids, numbers)
        return out
    if isinstance(value, list):
        return [_normalise(item, ids, numbers) for item in value]
    return value


def _audio_ms(direction: str, audio: bytes) -> float:
    return ulaw_ms(len(audio)) if direction in _TWILIO_SIDE else pcm24k_ms(len(audio))


def _linear(direction: str, audio: bytes) -> np.ndarray:
    pcm = audioop.ulaw2lin(audio, 2) if direction in _TWILIO_SIDE else audio[: len(audio) // 2 * 2]
    return np.frombuffer(pcm, dtype="<i2").astype(np.float64)


def _audio_differs(direction: str, before: bytes, now: bytes) -> float | None:
    """The RMS of the difference when it is over the tolerance, else `None`."""
    a, b = _linear(direction, before), _linear(direction, now)
    if len(a) != len(b):
        return float("inf")
    if len(a) == 0:
        return None
    error = float(np.sqrt(np.mean((a - b) ** 2)))
    allowed = max(AUDIO_TOLERANCE * float(np.sqrt(np.mean(a**2))), AUDIO_TOLERANCE_FLOOR)
    return error if error > allowed else None


def _summary(sent: _Sent) -> str:
    numbers = "".join(f" {key}={value:g}" for key, value in sent.numbers.items())
    text = sent.key if len(sent.key) <= 160 else sent.key[:157] + "..."
    return f"t={sent.frame.t_ms:7.0f} ms  {text}{numbers}"


def _listing(sign: str, items: list[_Sent]) -> list[str]:
    """Lines of a diff hunk, runs of identical messages shown once with a count."""
    lines: list[str] = []
    index = 0
    while index < len(items):
        run = index
        while run + 1 < len(items) and items[run + 1].key == items[index].key and not items[index].numbers:
            run += 1
        count = run - index + 1
        lines.append(f"  {sign} {_summary(items[index])}" + (f"  (and {count - 1} more like it)" if count > 1 else ""))
        index = run + 1
    return lines


def _compare_messages(direction: str, before: list[_Sent], now: list[_Sent]) -> list[str]:
    differences: list[str] = []
    matcher = difflib.SequenceMatcher(None, [s.key for s in before], [s.key for s in now], autojunk=False)
    for tag, i1, i2, j1, j2 in matcher.get_opcodes():
        if tag == "equal":
            differences += _compare_equal(direction, before[i1:i2], now[j1:j2])
            continue
        position = f"after message {i1} ({before[i1 - 1].frame.kind})" if i1 else "at the start"
        lines = [f"{direction}: the bridge sends different messages {position}; - recorded, + replayed:"]
        differences.append("\n".join(lines + _listing("-", before[i1:i2]) + _listing("+", now[j1:j2])))
    return differences


def _compare_equal(direction: str, before: list[_Sent], now: list[_Sent]) -> list[str]:
    differences: list[str] = []
    audio_off: list[tuple[_Sent, float]] = []
    for old, new in zip(before, now, strict=True):
        for key, value in old.numbers.items():
            other = new.numbers.get(key)
            if other is None or abs(other - value) > TRUNCATE_TOLERANCE_MS:
                differences.append(
                    f"{direction}: {old.frame.kind} {key} was {value:g}, is now {'missing' if other is None else f'{other:g}'} "
                    f"(tolerance ±{TRUNCATE_TOLERANCE_MS} ms)\n  - {_summary(old)}\n  + {_summary(new)}"
                )
        if old.audio is not None and new.audio is not None:
            error = _audio_differs(direction, old.audio, new.audio)
            if error is not None:
                audio_off.append((old, error))
    if audio_off:
        first, error = audio_off[0]
        differences.append(
            f"{direction}: the audio of {len(audio_off)} {first.frame.kind} message(s) differs beyond "
            f"{AUDIO_TOLERANCE:.0%} RMS; the first at t={first.frame.t_ms:.0f} ms (RMS of the difference {error:.0f})"
        )
    return differences


def _compare_caller_audio(before: list[_Sent], now: list[_Sent]) -> list[str]:
    direction = "bridge>realtime"
    old_ms = sum(_audio_ms(direction, s.audio or b"") for s in before)
    new_ms = sum(_audio_ms(direction, s.audio or b"") for s in now)
    old_sizes = [len(s.audio or b"") for s in before]
    new_sizes = [len(s.audio or b"") for s in now]
    if old_sizes != new_sizes:
        # Not strict: one list may be a prefix of the other, and then they differ where the shorter ends.
        index = next(
            (i for i, (a, b) in enumerate(zip(old_sizes, new_sizes, strict=False)) if a != b), min(len(old_sizes), len(new_sizes))
        )
        return [
            f"caller audio to the Realtime service: {len(before)} appends ({old_ms:.1f} ms) recorded, {len(now)} "
            f"({new_ms:.1f} ms) replayed; they first differ at append {index + 1}"
        ]
    old_pcm = b"".join(s.audio or b"" for s in before)
    new_pcm = b"".join(s.audio or b"" for s in now)
    block = PCM24K_BYTES_PER_MS * 100
    off = [
        start
        for start in range(0, len(old_pcm), block)
        if _audio_differs(direction, old_pcm[start : start + block], new_pcm[start : start + block]) is not None
    ]
    if off:
        return [
            f"caller audio to the Realtime service: {len(off)} of {-(-len(old_pcm) // block)} blocks of 100 ms differ "
            f"beyond {AUDIO_TOLERANCE:.0%} RMS, the first at {pcm24k_ms(off[0]):.0f} ms into the caller's audio"
        ]
    return []
