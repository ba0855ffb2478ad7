#!/usr/bin/env python3
"""The baseline for ``scripts/bench_calls.py --baseline-relay``: the simplest relay anyone would write.

Written the way Twilio's official Python sample for the Realtime API is: FastAPI for the webhook
and the media socket, a ``websockets`` client to the Realtime service asking for ``audio/pcmu``
both ways, stdlib ``json``, plain asyncio (no uvloop, httptools or orjson), and a mark after every
model delta. It forwards mu-law untouched, so whatever the bridge spends beyond it is the bridge's.
Kept deliberately unoptimised: it is the yardstick, not a product. Run as
``baseline_relay.py serve --host H --port P`` with ``PUBLIC_URL``, ``REALTIME_URL`` and ``OPENAI_API_KEY``.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import sys
from urllib.parse import parse_qs
from xml.sax.saxutils import quoteattr

import uvicorn
import websockets
from fastapi import FastAPI, Request, WebSocket
from fastapi.responses import PlainTextResponse, Response

app = FastAPI()


@app.get("/healthz")
async def healthz() -> PlainTextResponse:
    return PlainTextResponse("ok")


@app.post("/twilio/voice")
async def incoming_call(request: Request) -> Response:
    to = parse_qs((await request.body()).decode()).get("To", [""])[0]
    stream_url = os.environ["PUBLIC_URL"].replace("http", "ws", 1) + "/twilio/media"
    twiml = (
        f'<?xml version="1.0" encoding="UTF-8"?><Response><Connect><Stream url={quoteattr(stream_url)}>'
        f'<Parameter name="to" value={quoteattr(to)}/></Stream></Connect></Response>'
    )
    return Response(twiml, media_type="application/xml")


@app.websocket("/twilio/media")
async def media_stream(websocket: WebSocket) -> None:
    await websocket.accept()
    headers = {"Authorization": f"Bearer {os.environ['OPENAI_API_KEY']}"}
    async with websockets.connect(os.environ["REALTIME_URL"], additional_headers=headers) as openai_ws:
        stream_sid = None
        marks: list[str] = []

        async def receive_from_twilio() -> None:
            nonlocal stream_sid
            async for message in websocket.iter_text():
                data = json.loads(message)
                if data["event"] == "media":
                    await openai_ws.send(json.dumps({"type": "input_audio_buffer.append", "audio": data["media"]["payload"]}))
                elif data["event"] == "start":
                    stream_sid = data["start"]["streamSid"]
                    await send_session_update(data["start"]["customParameters"].get("to", ""))
                elif data["event"] == "mark" and marks:
                    marks.pop(0)
                elif data["event"] == "stop":
                    break
            await openai_ws.close()

        async def send_session_update(to: str) -> None:
            session = {
                "type": "realtime",
                "instructions": f"You answer calls to {to}",
                "audio": {
                    "input": {"format": {"type": "audio/pcmu"}, "turn_detection": {"type": "server_vad"}},
                    "output": {"format": {"type": "audio/pcmu"}, "voice": "alloy"},
                },
            }
            await openai_ws.send(json.dumps({"type": "session.update", "session": session}))

        async def send_to_twilio() -> None:
            async for message in openai_ws:
                response = json.loads(message)
                if response["type"] == "response.output_audio.delta" and "delta" in response:
                    # The sample re-encodes the payload it forwards; so does the baseline.
                    payload = base64.b64encode(base64.b64decode(response["delta"])).decode("utf-8")
                    await websocket.send_json({"event": "media", "streamSid": stream_sid, "media": {"payload": payload}})
                    await websocket.send_json({"event": "mark", "streamSid": stream_sid, "mark": {"name": "responsePart"}})
                    marks.append("responsePart")
                elif response["type"] == "input_audio_buffer.speech_started" and marks:
                    await websocket.send_json({"event": "clear", "streamSid": stream_sid})
                    marks.clear()

        await asyncio.gather(receive_from_twilio(), send_to_twilio())


def main() -> None:
    args = sys.argv[1:]
    if not args or args[0] != "serve":
        sys.exit("usage: baseline_relay.py serve [--host H] [--port P]")
    host = args[args.index("--host") + 1] if "--host" in args else "127.0.0.1"
    port = int(args[args.index("--port") + 1]) if "--port" in args else 8080
    uvicorn.run(app, host=host, port=port, loop="asyncio", http="h11", ws="websockets", log_level="warning")


if __name__ == "__main__":
    main()
