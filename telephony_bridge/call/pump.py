"""One phone call's I/O: a pump between the Media Stream socket, the Realtime socket and the controller.

Everything here only moves messages. Each socket is a `Leg`: its reader parses frames at the edge
and feeds the controller, and the actions the controller returns are queued to the leg's one
writer, so each socket sees its messages in exactly the order the controller decided them (a
`clear` can never overtake audio sent before it). Each action is dispatched once, by its base
class. The controller decides when to open, replace or close the Realtime session; this module
does it.
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import logging
import statistics
import time
import weakref
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, ClassVar, Literal, Protocol

import httpx
from websockets.exceptions import ConnectionClosed, ConnectionClosedOK

from telephony_bridge.call.call_control import Dialled
from telephony_bridge.call.controller import CallController
from telephony_bridge.call.events import (
    Action,
    AnsweredBy,
    CallerAudio,
    CallUpdate,
    CarriesAudio,
    CloseRealtime,
    CloseTwilio,
    EndCall,
    Event,
    HangUp,
    HangUpFailed,
    OpenRealtime,
    OperatorEnded,
    Outcome,
    ParkRealtime,
    RealtimeConnected,
    RealtimeDisconnected,
    RealtimeMessage,
    RunTool,
    StreamStarted,
    Tick,
    ToolAnswered,
    TransferEnded,
    TransferFailed,
    TwilioDisconnected,
    TwilioMessage,
    TwilioMessageRejected,
)
from telephony_bridge.call.summary import CallSummary
from telephony_bridge.call.supervision import CallTimings
from telephony_bridge.config import CallProfile, ModelPrices, RealtimeEndpoint
from telephony_bridge.errors import RealtimeConnectError
from telephony_bridge.logs import CallIds, bind_call, mask_number
from telephony_bridge.policy import InForce
from telephony_bridge.realtime.session import (
    RealtimeConnection,
    RealtimeEventParser,
    RealtimeWriter,
    encode_for_realtime,
    open_realtime,
    sender,
)
from telephony_bridge.tools.requests import (
    CallParties,
    after_call_body,
    call_tool,
    new_client,
    post_after_call,
    request_body,
)
from telephony_bridge.twilio.call_updates import CallUpdates
from telephony_bridge.twilio.media_socket import MediaSocket
from telephony_bridge.twilio.media_stream import TwilioInbound, encode_for_twilio

log = logging.getLogger(__name__)

Direction = Literal[
    "twilio>bridge", "bridge>twilio", "realtime>bridge", "bridge>realtime", "twilio-rest", "tools", "twilio-callback"
]
"""`twilio-rest` carries the call's REST requests to Twilio and their answers, as JSON; `tools` the operator's
tool requests (name and arguments) and their answers, never a signature; `twilio-callback` what Twilio's signed
callbacks told the live call (AMD's `AnsweredBy`), which no socket of the call carries."""


class CallTap(Protocol):
    """Sees a call's websocket traffic as it crosses the bridge (the call recorder is one).

    Besides every message, it is told when a Realtime session opens and when the service closes or
    drops the session in use: the two socket events the controller reacts to. Closes the bridge
    makes itself (a replaced session, the end of the call) are its own doing and are not reported.
    """

    def __call__(self, direction: Direction, frame: str | bytes) -> None:
        """A message, in either direction on either socket, as it was read or just before it is written."""

    def realtime_opened(self) -> None:
        """A Realtime session opened and is now the call's session."""

    def realtime_lost(self, code: int | None) -> None:
        """The service closed or dropped the call's session; `code` is the close code it sent, None if no close frame came."""


LatencyObserver = Callable[[Literal["caller>model", "model>caller"]], Callable[[float], None]]
"""Gives, for a direction, what to tell for each frame of audio: the seconds from its arrival at the bridge to its
audio leaving."""

TICK_S = 0.5
MAX_QUEUED_CHARS = 2 * 1024 * 1024
"""Audio a leg may hold for a socket that does not keep up: 3 minutes to Twilio, 30 s to the service. Past it,
audio is dropped (and counted) rather than grow the process: one slow peer must not take memory from the others."""
DRAIN_TIMEOUT_S = 0.2
"""How long the end of a call waits for Twilio's writer to send what is queued (a last mark, a clear)."""


class FrameWriter(Protocol):
    """A socket that can take frames without awaiting: what `Leg.write_held` writes through."""

    def ready(self) -> bool:
        """True when frames written now go out at once: the socket open and its buffer empty."""

    def write(self, frames: list[str]) -> None:
        """Send text messages in order, in one write to the transport."""


class Outbox:
    """The writes of one pass of the event loop's callbacks, made together once they have all run.

    A send on loopback that finds its peer's process idle pays for waking it: on this project's
    2-core VM a 1.7 KB send took 27 us 0.2 ms after the last one, 3 us right after it
    (scripts/bench_loopback_send.py), and the bridge's writes, each made right after its event,
    were a third of its CPU at 100 calls (docs/cpu.md). Each event's frames are still one write
    per socket, but the writes of every event the loop handled in one pass go out in a row, after
    them, so one wake-up serves them all. What waits is only the rest of that pass, well under a
    millisecond of added latency, and each socket keeps its order: a leg's held frames are written
    before any frame takes its queue.
    """

    _by_loop: ClassVar[weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Outbox]] = weakref.WeakKeyDictionary()

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._legs: list[Leg] = []

    @classmethod
    def of(cls, loop: asyncio.AbstractEventLoop) -> Outbox:
        outbox = cls._by_loop.get(loop)
        if outbox is None:
            outbox = cls._by_loop[loop] = cls(loop)
        return outbox

    def add(self, leg: Leg) -> None:
        if not self._legs:
            self._loop.call_soon(self._write)
        self._legs.append(leg)

    def _write(self) -> None:
        """Write every leg's held frames; one leg's failure is its call's alone."""
        legs, self._legs = self._legs, []
        for leg in legs:
            try:
                leg.write_held()
            except Exception as error:
                if leg.on_write_error is None:
                    log.exception("writing a leg's frames failed")
                else:
                    contextvars.copy_context().run(leg.on_write_error, error)


class Leg:
    """One socket of a call: the one place its frames meet the tap and the latency observer, and its ordered writer.

    `send` is the socket's send function, or None while the leg has no socket (between Realtime
    sessions): frames queued meanwhile are dropped, since a new session starts from its own
    configuration.

    With a `writer` as well, what events queued is written in one write when the writer is `ready`
    and nothing waits in the queue, after the loop's pending callbacks (`Outbox`); only a socket
    that does not keep up goes through the writer task. Waking that task cost a loop iteration per
    event and socket, and the write per frame a syscall (docs/cpu.md).
    """

    def __init__(
        self,
        inbound: Direction,
        outbound: Direction,
        clock: Callable[[], float],
        tap: CallTap | None,
        observe_latency: Callable[[float], None] | None,
    ) -> None:
        self.send: Callable[[str], Awaitable[None]] | None = None
        self.writer: FrameWriter | None = None
        self._batch: list[str] = []
        self._batch_stamps: list[float] = []
        self._outbox: Outbox | None = None
        self._in_outbox = False
        self.on_write_error: Callable[[Exception], None] | None = None
        """Told when a write the `Outbox` made for this leg failed: it ran outside any task or callback of the call."""
        self._inbound = inbound
        self._outbound = outbound
        self._clock = clock
        self._tap = tap
        self._observe_latency = observe_latency
        self._frames: deque[tuple[str, float | None]] = deque()
        self._wakeup: asyncio.Future[None] | None = None
        self._idle = asyncio.Event()
        self._idle.set()
        self._queued_chars = 0
        self.dropped = 0
        """Audio frames dropped because the socket did not keep up."""

    def received(self, frame: str | bytes) -> None:
        if self._tap is not None:
            self._tap(self._inbound, frame)

    def queue(self, frame: str, audio_arrived_at: float | None) -> None:
        """Queue `frame` for sending; `audio_arrived_at` stamps audio for the latency observer.

        Audio over `MAX_QUEUED_CHARS` is dropped; control messages (marks, clears, configuration) never are.
        """
        if audio_arrived_at is not None and self._queued_chars > MAX_QUEUED_CHARS:
            self.dropped += 1
            return
        if self.writer is not None and self.send is not None and self._idle.is_set() and self.writer.ready():
            self._batch.append(frame)
            if audio_arrived_at is not None:
                self._batch_stamps.append(audio_arrived_at)
            return
        self.write_held()
        self._queued_chars += len(frame)
        self._frames.append((frame, audio_arrived_at))
        self._idle.clear()
        wakeup = self._wakeup
        if wakeup is not None and not wakeup.done():
            wakeup.set_result(None)

    def flush(self) -> None:
        """Hand what `queue` held to the loop's `Outbox`, which writes it once the loop's pending callbacks have run."""
        if not self._batch or self._in_outbox:
            return
        self._in_outbox = True
        if self._outbox is None:
            self._outbox = Outbox.of(asyncio.get_running_loop())
        self._outbox.add(self)

    def write_held(self) -> None:
        """Write what `queue` held now, in one write (see the class docstring)."""
        self._in_outbox = False
        batch = self._batch
        if not batch:
            return
        self._batch = []
        writer = self.writer
        if writer is None or self.send is None:
            self._batch_stamps = []
            return
        if self._tap is not None:
            for frame in batch:
                self._tap(self._outbound, frame)
        writer.write(batch)
        stamps, self._batch_stamps = self._batch_stamps, []
        if stamps and self._observe_latency is not None:
            now = self._clock()
            for arrived_at in stamps:
                self._observe_latency(now - arrived_at)

    def drop_queued(self) -> None:
        self._batch = []
        self._batch_stamps = []
        self._frames.clear()
        self._queued_chars = 0

    async def write(self, closed: tuple[type[BaseException], ...]) -> None:
        """Send queued frames in order, forever; a frame the socket cannot take (`closed`) is dropped.

        A plain deque and one future to wake on, not an `asyncio.Queue`: the writer wakes once for
        what one event queued (a media frame and its mark) and sends it all in that wake-up, where
        the queue's bookkeeping per frame (`put_nowait`, `get`, `task_done`) cost more than the
        sending: `Queue.get` alone held 4 % of py-spy's samples of the bridge at 100 calls
        (`scripts/bench_calls.py --profile`).
        """
        frames = self._frames
        loop = asyncio.get_running_loop()
        while True:
            if not frames:
                self._idle.set()
                self._wakeup = loop.create_future()
                await self._wakeup
                continue
            frame, arrived_at = frames.popleft()
            self._queued_chars -= len(frame)
            send = self.send
            if send is None:
                continue
            if self._tap is not None:
                self._tap(self._outbound, frame)
            try:
                await send(frame)
            except closed:
                continue
            if arrived_at is not None and self._observe_latency is not None:
                self._observe_latency(self._clock() - arrived_at)

    async def drained(self, timeout_s: float) -> None:
        """Wait until every queued frame is sent, or `timeout_s` has passed."""
        self.write_held()
        try:
            await asyncio.wait_for(self._idle.wait(), timeout_s)
        except TimeoutError:
            pass


class Call:
    """A call the webhook accepted: its Realtime session opens at once, its media socket attaches later."""

    def __init__(
        self,
        call_sid: str,
        called_number: str,
        profile: CallProfile,
        endpoint: RealtimeEndpoint,
        clock: Callable[[], float],
        *,
        caller_number: str = "",
        account_sid: str = "",
        call_updates: CallUpdates | None = None,
        timings: CallTimings = CallTimings(),
        on_end: Callable[[Call], None] = lambda call: None,
        tap: CallTap | None = None,
        on_latency: LatencyObserver | None = None,
        mask_caller_number: bool = True,
        in_force: InForce = "always",
        prices: ModelPrices | None = None,
        dialled: Dialled | None = None,
        on_change: Callable[[CallSummary], None] | None = None,
    ) -> None:
        self.call_sid = call_sid
        self.called_number = called_number
        self.profile = profile
        self.caller_number = caller_number
        self.account_sid = account_sid
        """The Twilio account the call belongs to (from the webhook, or the stream's `start`)."""
        self.dialect = endpoint.dialect
        self.model = endpoint.model
        self.answered_at = clock()
        self.duration_s: float | None = None
        """Seconds from the answer to the end, on the call's clock; set when the call has ended."""
        self.controller = CallController(profile, clock, timings, dialled, in_force=in_force, prices=prices)
        self.ended = asyncio.Event()
        self._clock = clock
        self._endpoint = endpoint
        self._parser = RealtimeEventParser(endpoint.dialect, call_sid, profile.audio_format)
        self._realtime: RealtimeConnection | None = None
        self._media_socket: MediaSocket | None = None
        self._twilio = Leg("twilio>bridge", "bridge>twilio", clock, tap, _observer(on_latency, "model>caller"))
        self._model = Leg("realtime>bridge", "bridge>realtime", clock, tap, _observer(on_latency, "caller>model"))
        self._twilio.on_write_error = self._model.on_write_error = self._write_failed
        self._http: httpx.AsyncClient | None = None
        self.after_call: asyncio.Task[int | None] | None = None
        """The after-call POST, once the call has ended and its number names an `after_call` URL."""
        self._call_updates = call_updates
        self._twilio_writer: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._opening = 0
        self._closing = False
        self._on_end = on_end
        self._tap = tap
        self._mask_caller_number = mask_caller_number
        self._log_ids = CallIds(call_sid)
        self._on_change = on_change
        """Told the call's summary when what an operator watches changes (a transcript line, the activity)."""
        self._shown = self.controller.shown()

    def begin(self) -> None:
        """Start opening the Realtime session now, while Twilio is still reading the webhook's answer."""
        bind_call(self._log_ids)
        caller = mask_number(self.caller_number) if self._mask_caller_number else self.caller_number
        if self.controller.dialled is not None:
            log.info(
                "call started: %s answered a call from %s", caller, self.called_number,
                extra={"event": "call_started", "from": self.called_number, "to": caller, "dialect": self.dialect,
                       "direction": "outbound"},
            )
        else:
            log.info(
                "call started: %s calling %s",
                caller or "an unknown caller",
                self.called_number,
                extra={"event": "call_started", "from": caller, "to": self.called_number, "dialect": self.dialect},
            )
        self._spawn(self._model.write(closed=(ConnectionClosed,)))
        self._spawn(self._tick())
        self._perform(self.controller.start(), None)
        self._changed()

    def summary(self) -> CallSummary:
        """The call as a value: final once `ended` is set, a snapshot before."""
        duration_s = self.duration_s if self.duration_s is not None else self._clock() - self.answered_at
        return self.controller.summarise(
            call_sid=self.call_sid, called_number=self.called_number, caller_number=self.caller_number,
            model=self.model, dialect=self.dialect, duration_s=duration_s,
            frames_dropped=self._twilio.dropped + self._model.dropped,
        )

    async def run_media(
        self, websocket: MediaSocket, started: StreamStarted, started_frame: str | bytes, inbound: TwilioInbound
    ) -> None:
        """Serve the call's Media Stream until it ends; `inbound` is the socket's parser, which read the `start`."""
        self._log_ids.stream_sid = started.stream_sid
        bind_call(self._log_ids)
        inbound.call_sid = self.call_sid
        self._media_socket = websocket
        self._twilio.send = websocket.send_text
        self._twilio.writer = websocket
        self._twilio_writer = self._spawn(self._twilio.write(closed=(RuntimeError,)))
        log.debug("call %s: media stream %s started", self.call_sid, started.stream_sid)
        self._twilio.received(started_frame)
        self._feed(started, None)
        flooded = asyncio.get_running_loop().create_future()

        def media_message(frame: str | bytes) -> None:
            if flooded.done():
                return
            arrived_at = self._clock()
            self._twilio.received(frame)
            event = inbound.parse(frame)
            if event is None:
                return
            self._feed(event, arrived_at)
            if type(event) is TwilioMessageRejected and inbound.flooding:  # only a message over the cap can flood
                log.warning("call %s: the media socket flooded the bridge; closing it", self.call_sid)
                flooded.set_result(None)

        listening = asyncio.ensure_future(websocket.listen(self._guarded(media_message)))
        ended = asyncio.ensure_future(self.ended.wait())
        try:
            await asyncio.wait((listening, flooded, ended), return_when=asyncio.FIRST_COMPLETED)
        finally:
            listening.cancel()
            ended.cancel()
            self._feed(TwilioDisconnected(), None)
            if not self.ended.is_set() and self.controller.control.caller_away:
                await self._stream_left(websocket)
            else:
                await self.ended.wait()
                await _close_quietly(websocket)

    async def _stream_left(self, websocket: MediaSocket) -> None:
        """The stream ended for a transfer: the call lives on without it until the dial's outcome."""
        await self._twilio.drained(DRAIN_TIMEOUT_S)
        self._twilio.send = None
        self._twilio.writer = None
        self._media_socket = None
        if self._twilio_writer is not None:
            self._twilio_writer.cancel()
        await _close_quietly(websocket)

    def transfer_ended(self, dial_status: str) -> None:
        """Twilio's `<Dial action>` for this call's transfer: how the dialled leg ended."""
        self._feed(TransferEnded(dial_status), None)

    def answered_by(self, amd_result: str) -> None:
        """Twilio's answering-machine detection for this outbound call: who answered."""
        self._record("twilio-callback", json.dumps({"kind": "amd", "params": {"AnsweredBy": amd_result}}))
        self._feed(AnsweredBy(amd_result), None)

    def end(self, reason: str, outcome: Outcome) -> None:
        """End the call from outside (shutdown, an unclaimed session): both sockets close."""
        self._feed(EndCall(reason, outcome), None)

    def end_by_operator(self, goodbye: str) -> None:
        """An operator ends the call: Twilio says `goodbye` and hangs up (through the REST API), and the call ends."""
        self._feed(OperatorEnded(goodbye), None)

    def _feed(self, event: Event, arrived_at: float | None) -> None:
        self._perform(self.controller.handle(event), arrived_at)
        # The caller's frames (50 a second) change neither the transcript nor the activity: no need to look.
        if self._on_change is not None and type(event) is not CallerAudio and self.controller.shown() != self._shown:
            self._changed()

    def _changed(self) -> None:
        if self._on_change is not None:
            self._shown = self.controller.shown()
            self._on_change(self.summary())

    def _perform(self, actions: list[Action], arrived_at: float | None) -> None:
        """Carry out each action once, by its kind; `arrived_at` stamps the audio it carries for the latency observer."""
        for action in actions:
            stamp = arrived_at if isinstance(action, CarriesAudio) else None
            if isinstance(action, TwilioMessage):
                self._twilio.queue(encode_for_twilio(action, self.controller.stream_sid or ""), stamp)
            elif isinstance(action, RealtimeMessage):
                self._model.queue(encode_for_realtime(action, self.dialect), stamp)
            elif isinstance(action, OpenRealtime):
                self._spawn(self._open_realtime(action))
            elif isinstance(action, CallUpdate):
                self._spawn(self._update_call(action))
            elif isinstance(action, RunTool):
                self._spawn(self._run_tool(action))
            elif isinstance(action, ParkRealtime):
                self._park_realtime()
            elif isinstance(action, (CloseRealtime, CloseTwilio)) and not self._closing:
                self._closing = True
                self._spawn(self._close(action))
        self._twilio.flush()
        self._model.flush()

    def _spawn(self, coroutine: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(coroutine, name=getattr(coroutine, "__qualname__", None))
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[None]) -> None:
        """No task of a call dies silently: one that fails ends the call, loudly, and the caller gets the fallback."""
        self._tasks.discard(task)
        if task.cancelled() or task.exception() is None:
            return
        log.error("call %s: task %s failed; ending the call", self.call_sid, task.get_name(), exc_info=task.exception())
        self._fail()

    def _guarded(self, handle: Callable[[str | bytes], None]) -> Callable[[str | bytes], None]:
        """`handle` as a socket's message callback: in the call's logging context, and failing like a task fails.

        Sockets call it from their protocol's `data_received`, outside any task of the call; an
        exception there must end this call loudly, not reach (and close) the socket's transport.
        """
        context = contextvars.copy_context()

        def guarded(message: str | bytes) -> None:
            try:
                context.run(handle, message)
            except Exception:
                log.error("call %s: handling a message failed; ending the call", self.call_sid, exc_info=True)
                self._fail()

        return guarded

    def _write_failed(self, error: Exception) -> None:
        bind_call(self._log_ids)
        log.error("call %s: writing to a socket failed; ending the call", self.call_sid, exc_info=error)
        self._fail()

    def _fail(self) -> None:
        """A failure of the bridge's own: end the call, and the caller hears the fallback message."""
        try:
            self.end("the bridge failed", "bridge_error")
        finally:
            if not self._closing:
                self._closing = True
                self._spawn(self._close(CloseTwilio("the bridge failed")))

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(TICK_S)
            self._feed(Tick(), None)

    async def _update_call(self, update: CallUpdate) -> None:
        """Hang up or transfer through Twilio's REST API; a failure goes back to the controller."""
        if self._call_updates is None:
            self._feed(_not_possible(update, "the bridge has no Twilio REST credentials"), None)
            return
        failed = await self._call_updates.carry_out(self, update, self._observe_rest)
        if failed is not None:
            self._feed(failed, None)

    async def _run_tool(self, run: RunTool) -> None:
        """One tool call in a task of its own: a slow tool server delays nothing but its own answer.

        A call that ends cancels this task, which abandons the request; nothing is fed back then.
        """
        if self._http is None:
            client = await new_client()
            if self._http is None:
                self._http = client
            else:
                await client.aclose()
        parties = CallParties(self.call_sid, self.caller_number, self.called_number)
        body = request_body(run.tool, run.arguments, parties)
        self._record("tools", json.dumps({"kind": "request", "call_id": run.call_id, "tool": run.tool.name,
                                         "arguments": json.loads(run.arguments or "{}")}))
        started = self._clock()
        result = await call_tool(self._http, run.tool, body)
        latency_ms = (self._clock() - started) * 1000.0
        self._record("tools", json.dumps({"kind": "answer", "call_id": run.call_id, "tool": run.tool.name,
                                         "outcome": result.outcome, "status": result.status, "output": result.output}))
        log.info("call %s: tool %s: %s in %.0f ms", self.call_sid, run.tool.name, result.outcome, latency_ms,
                 extra={"event": "tool_call", "tool": run.tool.name, "outcome": result.outcome,
                        "latency_ms": round(latency_ms, 1)})
        self._feed(ToolAnswered(run.call_id, result.output, result.outcome, latency_ms), None)

    async def _post_after_call(self, summary: CallSummary) -> int | None:
        """The ended call's summary to the number's `after_call` URL, retried with backoff; never on the audio path."""
        after = self.profile.after_call
        if after is None:
            return None
        async with await new_client() as client:
            status = await post_after_call(client, after, after_call_body(summary, time.time()))
        if status is None:
            log.warning("call %s: the after-call summary could not be delivered", self.call_sid)
        return status

    def _record(self, direction: Direction, frame: str) -> None:
        """Work off the call's sockets (REST requests, tool calls), for its recording: it has no leg of its own."""
        if self._tap is not None:
            self._tap(direction, frame)

    def _observe_rest(self, kind: str, details: dict[str, Any]) -> None:
        """Each REST request and answer of the call, for its recording (never the credentials)."""
        self._record("twilio-rest", json.dumps({"kind": kind, **details}, default=str))

    def _park_realtime(self) -> None:
        """Close the session but keep the call: the caller is away being transferred."""
        connection, self._realtime = self._realtime, None
        self._model.send = None
        self._model.writer = None
        self._model.drop_queued()
        if connection is not None:
            self._spawn(connection.close(code=1000, reason="caller transferred"))

    async def _open_realtime(self, action: OpenRealtime) -> None:
        """Open a session; a session it replaces is closed only once the new one is open."""
        self._opening += 1
        try:
            if action.delay_s:
                await asyncio.sleep(action.delay_s)
            connection = await open_realtime(self._endpoint, action.timeout_s)
        except RealtimeConnectError as error:
            log.error("call %s: %s (%s)", self.call_sid, error, action.reason)
            self._feed(RealtimeDisconnected(str(error), retryable=error.retryable), None)
            return
        finally:
            self._opening -= 1
        replaced, self._realtime = self._realtime, connection
        self._model.drop_queued()
        self._model.send = sender(connection)
        self._model.writer = RealtimeWriter(connection)
        log.debug("call %s: realtime session open (%s dialect; %s)", self.call_sid, self.dialect, action.reason)
        if self._tap is not None:
            self._tap.realtime_opened()
        self._spawn(self._read_realtime(connection))
        if replaced is not None:
            self._spawn(replaced.close(code=1000, reason="session replaced"))
        self._feed(RealtimeConnected(), None)

    def _realtime_message(self, frame: str | bytes) -> None:
        self._model.received(frame)
        event = self._parser.read(frame)
        if event is not None:
            self._feed(event, self._clock())

    async def _read_realtime(self, connection: RealtimeConnection) -> None:
        connection.listen(self._guarded(self._realtime_message))
        await connection.wait_closed()
        closed = connection.protocol.close_exc
        if isinstance(closed, ConnectionClosedOK):
            reason = "closed by the service"
        else:
            reason = f"connection lost ({closed.rcvd.code if closed.rcvd else 'no close frame'})"
        if connection is not self._realtime or self._closing:
            return
        self._realtime = None
        self._model.send = None
        self._model.writer = None
        self._model.drop_queued()
        if self._tap is not None:
            received = connection.protocol.close_rcvd
            self._tap.realtime_lost(received.code if received is not None else None)
        if self._opening:
            log.info("call %s: realtime session %s while its replacement opens", self.call_sid, reason)
            return
        log.warning("call %s: realtime session %s", self.call_sid, reason)
        self._feed(RealtimeDisconnected(reason), None)

    async def _close(self, first: CloseRealtime | CloseTwilio) -> None:
        """End the call: both sockets close, the Realtime one at once (it bills by the minute)."""
        log.debug("call %s: ending: %s", self.call_sid, first.reason)
        if self._realtime is not None:
            await self._realtime.close(code=1000, reason="call ended")
        if self._media_socket is not None:
            await self._twilio.drained(DRAIN_TIMEOUT_S)
            await _close_quietly(self._media_socket)
        self.duration_s = self._clock() - self.answered_at
        self.ended.set()
        summary = self.summary()
        _log_summary(summary)
        if self._on_change is not None:
            self._on_change(summary)
        for task in list(self._tasks):
            if task is not asyncio.current_task():
                task.cancel()
        if self._http is not None:
            await self._http.aclose()
        if self.profile.after_call is not None:
            self.after_call = asyncio.get_running_loop().create_task(self._post_after_call(summary))
        self._on_end(self)


def _not_possible(update: CallUpdate, reason: str) -> Event:
    return HangUpFailed(reason) if isinstance(update, HangUp) else TransferFailed(reason)


def _observer(
    on_latency: LatencyObserver | None, direction: Literal["caller>model", "model>caller"]
) -> Callable[[float], None] | None:
    return on_latency(direction) if on_latency is not None else None


def _log_summary(summary: CallSummary) -> None:
    """The call's one end line: how it ended and what an operator checks first."""
    counters = summary.counters
    latencies = summary.response_latencies_ms
    p50 = round(statistics.median(latencies)) if latencies else None
    log.info(
        "call ended (%s: %s) after %.1f s; frames in %d out %d, barge-ins %d, reconnects %d, response p50 %s ms",
        summary.outcome, summary.end_reason, summary.duration_s, counters.frames_in, counters.frames_out,
        counters.barge_ins, counters.reconnects, p50 if p50 is not None else "-",
        extra={
            "event": "call_ended",
            "outcome": summary.outcome,
            "end_reason": summary.end_reason,
            "duration_s": round(summary.duration_s, 3),
            "frames_in": counters.frames_in,
            "frames_out": counters.frames_out,
            "barge_ins": counters.barge_ins,
            "reconnects": counters.reconnects,
            "malformed_twilio": counters.malformed_twilio,
            "malformed_realtime": counters.malformed_realtime,
            "realtime_errors": dict(summary.realtime_errors),
            "response_latency_p50_ms": p50,
        },
    )


async def _close_quietly(websocket: MediaSocket) -> None:
    """Close a media socket that may already be closed by either side (its `close` never raises for that)."""
    await websocket.close(code=1000)
