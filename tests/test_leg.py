"""A call's leg: one ordered writer per socket, bounded when the socket does not keep up."""

from __future__ import annotations

import asyncio

from telephony_bridge.call.pump import MAX_QUEUED_CHARS, Leg


async def test_a_leg_sends_in_order_and_reports_each_frame_to_the_tap_once() -> None:
    seen: list[tuple[str, str | bytes]] = []
    sent: list[str] = []

    class Tap:
        def __call__(self, direction: str, frame: str | bytes) -> None:
            seen.append((direction, frame))

    async def send(frame: str) -> None:
        sent.append(frame)

    leg = Leg("twilio>bridge", "bridge>twilio", asyncio.get_running_loop().time, Tap(), None)  # type: ignore[arg-type]
    leg.send = send
    writer = asyncio.create_task(leg.write(closed=(ConnectionError,)))
    for n in range(5):
        leg.queue(f"m{n}", None)
    leg.received("in")
    await leg.drained(1.0)
    writer.cancel()
    assert sent == ["m0", "m1", "m2", "m3", "m4"]
    assert seen == [("twilio>bridge", "in"), *(("bridge>twilio", f"m{n}") for n in range(5))]


async def test_audio_for_a_socket_that_does_not_keep_up_is_dropped_and_counted_but_control_messages_are_not() -> None:
    leg = Leg("twilio>bridge", "bridge>twilio", asyncio.get_running_loop().time, None, None)
    frame = "x" * 64 * 1024
    for _ in range(MAX_QUEUED_CHARS // len(frame) + 10):
        leg.queue(frame, audio_arrived_at=1.0)
    leg.queue('{"event":"clear"}', None)
    assert leg.dropped == 9
    released: list[str] = []

    async def send(text: str) -> None:
        released.append(text)

    leg.send = send
    writer = asyncio.create_task(leg.write(closed=(ConnectionError,)))
    await leg.drained(1.0)
    writer.cancel()
    assert released[-1] == '{"event":"clear"}'


class Socket:
    """A socket that takes frames at once unless its buffer is full; it records each write and each send."""

    def __init__(self) -> None:
        self.writes: list[list[str]] = []
        self.sent: list[str] = []
        self.buffered = False

    def ready(self) -> bool:
        return not self.buffered

    def write(self, frames: list[str]) -> None:
        self.writes.append(list(frames))

    async def send(self, frame: str) -> None:
        self.sent.append(frame)


async def test_what_one_event_queued_leaves_in_one_write_with_its_latency_observed() -> None:
    latencies: list[float] = []
    leg = Leg("twilio>bridge", "bridge>twilio", lambda: 10.5, None, latencies.append)
    socket = Socket()
    leg.send, leg.writer = socket.send, socket
    leg.queue("media", audio_arrived_at=10.0)
    leg.queue("mark", None)
    assert socket.writes == [], "nothing is written before the event's actions are all queued"
    leg.flush()
    assert socket.writes == [], "nothing is written before the loop's pending callbacks have run"
    await asyncio.sleep(0)
    assert socket.writes == [["media", "mark"]] and socket.sent == []
    assert latencies == [0.5]


async def test_the_writes_of_one_pass_of_the_loop_go_out_together_after_it_and_a_failure_stays_with_its_leg() -> None:
    order: list[str] = []
    failures: list[Exception] = []

    class Failing(Socket):
        def write(self, frames: list[str]) -> None:
            raise RuntimeError("transport closed")

    legs = [Leg("twilio>bridge", "bridge>twilio", lambda: 0.0, None, None) for _ in range(3)]
    sockets = [Socket(), Failing(), Socket()]
    for leg, socket in zip(legs, sockets, strict=True):
        leg.send, leg.writer = socket.send, socket
        leg.on_write_error = failures.append

    def event(n: int) -> None:
        legs[n].queue(f"frame {n}", None)
        legs[n].flush()
        order.append(f"event {n}" if all(not socket.writes for socket in sockets) else "written too early")

    loop = asyncio.get_running_loop()
    for n in (2, 1, 0, 2):
        loop.call_soon(event, n)
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert order == ["event 2", "event 1", "event 0", "event 2"]
    assert sockets[2].writes == [["frame 2", "frame 2"]] and sockets[0].writes == [["frame 0"]]
    assert [str(error) for error in failures] == ["transport closed"]


async def test_a_socket_with_a_full_buffer_goes_through_the_writer_and_keeps_the_order() -> None:
    leg = Leg("twilio>bridge", "bridge>twilio", asyncio.get_running_loop().time, None, None)
    socket = Socket()
    leg.send, leg.writer = socket.send, socket
    leg.queue("first", None)
    socket.buffered = True
    leg.queue("second", None)
    assert socket.writes == [["first"]], "what was held for the write went out before the queue took over"
    socket.buffered = False
    leg.queue("third", None)
    writer = asyncio.create_task(leg.write(closed=(ConnectionError,)))
    await leg.drained(1.0)
    writer.cancel()
    leg.flush()
    assert socket.writes == [["first"]] and socket.sent == ["second", "third"]
