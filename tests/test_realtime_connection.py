"""The Realtime socket's reader, over real sockets: frames split anywhere arrive whole, the rest stays websockets'.

The service side here is a plain TCP server that answers the handshake with websockets' sans-I/O
protocol and then writes frames in the pieces a test chooses, so the bridge's reader sees headers
and payloads cut at every awkward place and the handshake's response in the same read as a frame.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

from websockets.frames import Close, Frame, Opcode
from websockets.server import ServerProtocol

from telephony_bridge.config import RealtimeEndpoint
from telephony_bridge.realtime.session import MAX_EVENT_BYTES, RealtimeConnection, open_realtime


class Service:
    """One connection's server side: the handshake done, frames written in chosen pieces, the client's frames read."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.protocol = ServerProtocol(max_size=None)

    async def handshake(self) -> bytes:
        """Read the upgrade request; return the response's bytes, for the caller to write with what follows."""
        self.protocol.receive_data(await self.reader.readuntil(b"\r\n\r\n"))
        request = self.protocol.events_received()[0]
        self.protocol.send_response(self.protocol.accept(request))
        return b"".join(self.protocol.data_to_send())

    async def write_in_pieces(self, data: bytes, cuts: list[int]) -> None:
        """Write `data` cut at each offset in `cuts`, each piece its own segment on loopback."""
        start = 0
        for cut in [*cuts, len(data)]:
            self.writer.write(data[start:cut])
            await self.writer.drain()
            await asyncio.sleep(0.002)
            start = cut

    async def client_frames(self, count: int) -> list[Frame]:
        """The next `count` frames the client sent."""
        frames: list[Frame] = []
        while len(frames) < count:
            data = await asyncio.wait_for(self.reader.read(65536), 5)
            if not data:
                break
            self.protocol.receive_data(data)
            frames.extend(event for event in self.protocol.events_received() if isinstance(event, Frame))
        return frames


Script = Callable[[Service], Awaitable[None]]


@asynccontextmanager
async def bridge_connected_to(script: Script) -> AsyncIterator[tuple[RealtimeConnection, list[str | bytes]]]:
    """Open the bridge's Realtime connection to a service that follows `script`; yields it and what it heard."""
    done = asyncio.get_running_loop().create_future()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            await script(Service(reader, writer))
            done.set_result(None)
        except BaseException as error:
            done.set_exception(error)
            raise
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    endpoint = RealtimeEndpoint(url=f"ws://127.0.0.1:{port}/v1/realtime", headers={}, dialect="ga")
    connection = await open_realtime(endpoint, 5)
    heard: list[str | bytes] = []
    connection.listen(heard.append)
    try:
        yield connection, heard
        await asyncio.wait_for(done, 10)
    finally:
        await connection.close()
        server.close()
        await server.wait_closed()


def text(payload: str) -> bytes:
    return Frame(Opcode.TEXT, payload.encode()).serialize(mask=False)


async def test_text_frames_cut_anywhere_arrive_whole_and_in_order() -> None:
    messages = [f'{{"n":{n},"delta":"{"A" * size}"}}' for n, size in enumerate([0, 100, 120, 300, 65_600, 70_000, 5])]
    wire = b"".join(text(message) for message in messages)
    first = len(text(messages[0]))
    second_end = first + len(text(messages[1]))
    third_end = second_end + len(text(messages[2]))
    cuts = [first + 1, second_end - 1, second_end + 2, second_end + 3, third_end + 4, third_end + 200, third_end + 60_000]

    async def script(service: Service) -> None:
        response = await service.handshake()
        await service.write_in_pieces(response + wire, [len(response) + cut for cut in [3, *cuts]])
        await asyncio.sleep(0.2)

    async with bridge_connected_to(script) as (_, heard):
        await asyncio.sleep(0.3)
    assert heard == messages


async def test_pings_fragments_and_binary_still_go_through_websockets() -> None:
    pong: list[Frame] = []

    async def script(service: Service) -> None:
        await service.write_in_pieces(await service.handshake(), [])
        wire = (
            text('{"type":"before"}')
            + Frame(Opcode.PING, b"are you there").serialize(mask=False)
            + Frame(Opcode.TEXT, b'{"type":"frag', fin=False).serialize(mask=False)
            + Frame(Opcode.CONT, b'mented"}').serialize(mask=False)
            + Frame(Opcode.BINARY, b"\x00\x01\x02").serialize(mask=False)
            + text('{"type":"after"}')
        )
        await service.write_in_pieces(wire, [5, 30, 31])
        pong.extend(await service.client_frames(1))

    async with bridge_connected_to(script) as (_, heard):
        await asyncio.sleep(0.3)
    assert heard == ['{"type":"before"}', '{"type":"fragmented"}', b"\x00\x01\x02", '{"type":"after"}']
    assert [(frame.opcode, frame.data) for frame in pong] == [(Opcode.PONG, b"are you there")]


async def refused_with(wire: bytes) -> tuple[list[str | bytes], list[Frame], int | None]:
    """What the bridge heard, the frames it answered with and its close code, after a good message and then `wire`."""
    answer: list[Frame] = []

    async def script(service: Service) -> None:
        await service.write_in_pieces(await service.handshake() + text('{"type":"good"}') + wire, [])
        answer.extend(await service.client_frames(1))

    async with bridge_connected_to(script) as (connection, heard):
        await asyncio.wait_for(connection.wait_closed(), 5)
        sent = connection.protocol.close_sent
    return heard, answer, sent.code if sent is not None else None


async def test_a_frame_over_the_size_limit_is_refused_with_1009_from_its_header() -> None:
    header_only = Frame(Opcode.TEXT, b"x" * (MAX_EVENT_BYTES + 1)).serialize(mask=False)[:10]
    heard, answer, code = await refused_with(header_only)
    assert heard == ['{"type":"good"}'] and code == 1009
    assert [Close.parse(frame.data).code for frame in answer] == [1009]


async def test_a_text_frame_that_is_not_utf8_is_refused_with_1007() -> None:
    heard, answer, code = await refused_with(Frame(Opcode.TEXT, b'{"bad":"\xff"}').serialize(mask=False))
    assert heard == ['{"type":"good"}'] and code == 1007
    assert [Close.parse(frame.data).code for frame in answer] == [1007]


async def test_a_masked_frame_from_the_service_is_a_protocol_error() -> None:
    heard, answer, code = await refused_with(Frame(Opcode.TEXT, b'{"type":"masked"}').serialize(mask=True))
    assert heard == ['{"type":"good"}'] and code == 1002
    assert [Close.parse(frame.data).code for frame in answer] == [1002]


async def test_the_service_closing_is_a_clean_close_with_its_code() -> None:
    async def script(service: Service) -> None:
        close = Frame(Opcode.CLOSE, Close(1000, "bye").serialize()).serialize(mask=False)
        await service.write_in_pieces(await service.handshake() + text('{"type":"last"}') + close, [])
        await service.client_frames(1)

    async with bridge_connected_to(script) as (connection, heard):
        await asyncio.wait_for(connection.wait_closed(), 5)
        received = connection.protocol.close_rcvd
    assert heard == ['{"type":"last"}']
    assert received is not None and received.code == 1000
