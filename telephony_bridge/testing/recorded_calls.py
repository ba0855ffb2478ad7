"""The calls `tests/recordings/` holds, and how to record them again.

Each scenario is one short call through the real bridge, the Realtime simulator and a simulated
Twilio call, recorded by the bridge itself (`record = true`). When the bridge's behaviour changes
on purpose, re-record them all and review the diff of the replays:

    scripts/record_fixtures            # or: python -m telephony_bridge.testing.recorded_calls DIR

The model's answer is 1 s of speech-like audio and each call lasts 1-3 s, so every file stays
around 100-300 KB and every replay takes a few seconds. Twilio's REST API is `TwilioApiSimulator`,
so a call the model ends records its REST hang-up and Twilio's answer. The outbound scenarios are calls
the bridge places (`OutboundCalls.place`) to a callee the stand-in rings: a person or a voicemail, whose
AMD result reaches the call on its signed callback and is recorded with its time.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import shutil
import sys
import tempfile
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from fastapi import FastAPI

from telephony_bridge.config import parse_config, settings_from_env
from telephony_bridge.outbound.placing import OutboundRequest
from telephony_bridge.testing.bridge_server import serve_app
from telephony_bridge.testing.realtime_simulator import (
    RealtimeSimulator,
    ScriptedAnswer,
    ScriptedCall,
    SimulatedSession,
    speech_like_pcm16,
)
from telephony_bridge.testing.twilio_api import Answerer, TwilioApiSimulator
from telephony_bridge.testing.twilio_simulator import SimulatedCall, speech_like_ulaw

AUTH_TOKEN = "twilio-auth-token-for-recordings"
API_KEY = "sk-key-for-recordings"
PUBLIC_URL = "https://bridge.example.com"
ACCOUNT_SID = "AC" + "0" * 32
NUMBER = "+15005550100"
GREETED_NUMBER = "+15005550101"
REMINDER_NUMBER = "+15005550102"
"""Places the outbound calls: its greeting and voicemail message are filled from the call's context."""
CALLEE = "+15005550199"
REMINDER_CONTEXT = {"name": "Ada", "appointment": "Tue 10:00"}
ANSWER_MS = 1000
SPEECH_MS = 400

CONFIG = f"""
[defaults]
instructions = "You answer the phone."
voice = "marin"
record = true

[defaults.turn_detection]
silence_duration_ms = 300

[numbers."{GREETED_NUMBER}"]
greeting = "Hello, how can I help?"

[numbers."{REMINDER_NUMBER}"]
instructions = "You are the reminder line of Bright Smile Dental, calling {{name}}."
greeting = "Hello {{name}}, this is Bright Smile Dental about your appointment on {{appointment}}."
voicemail_message = "Hi {{name}}, your appointment is on {{appointment}}. Goodbye."

[call_log]
path = ""
"""

Scenario = Callable[[SimulatedCall, RealtimeSimulator], Awaitable[None]]


@dataclass(frozen=True)
class RecordedScenario:
    name: str
    run: Scenario
    number: str = NUMBER
    dialect: str = "ga"
    answers: tuple[ScriptedAnswer, ...] = ()
    """What the model does, response by response; empty: every response is the 1 s answer."""
    answerer: Answerer | None = None
    """Set for a call the bridge places (from `REMINDER_NUMBER` to `CALLEE`): who picks up; `run` gets their side."""


async def _session(realtime: RealtimeSimulator) -> SimulatedSession:
    session = await realtime.wait_for_session(0)
    await session.wait_for("session.update")
    return session


async def _one_answer(call: SimulatedCall, realtime: RealtimeSimulator) -> None:
    """The caller asks, the model answers, the caller hears it all and hangs up."""
    await _session(realtime)
    call.say(speech_like_ulaw(SPEECH_MS))
    await call.wait_heard(realtime.answer_ms, timeout=10)
    await asyncio.sleep(0.1)
    await call.hang_up()


async def _greeting(call: SimulatedCall, realtime: RealtimeSimulator) -> None:
    await call.wait_heard(realtime.answer_ms, timeout=10)
    await asyncio.sleep(0.1)
    await call.hang_up()


async def _barge_in_mid_answer(call: SimulatedCall, realtime: RealtimeSimulator) -> None:
    await _session(realtime)
    call.say(speech_like_ulaw(SPEECH_MS))
    await call.wait_heard(500, timeout=10)
    call.say(speech_like_ulaw(SPEECH_MS))
    await call.wait_for_message("clear", timeout=5)
    await asyncio.sleep(0.2)
    await call.hang_up()


async def _barge_in_after_answer(call: SimulatedCall, realtime: RealtimeSimulator) -> None:
    session = await _session(realtime)
    call.say(speech_like_ulaw(SPEECH_MS))
    await call.wait_heard(realtime.answer_ms, timeout=10)
    await asyncio.sleep(0.2)
    started = len(session.sent)
    call.say(speech_like_ulaw(SPEECH_MS))
    await session.wait_for("input_audio_buffer.speech_started", sent=True, since=started, timeout=5)
    await asyncio.sleep(0.2)
    await call.hang_up()


async def _dtmf(call: SimulatedCall, realtime: RealtimeSimulator) -> None:
    session = await _session(realtime)
    await asyncio.sleep(0.1)
    await call.send_dtmf("5")
    await session.wait_for("response.create", timeout=5)
    await call.wait_heard(realtime.answer_ms, timeout=10)
    await asyncio.sleep(0.1)
    await call.hang_up()


async def _hang_up_mid_answer(call: SimulatedCall, realtime: RealtimeSimulator) -> None:
    await _session(realtime)
    call.say(speech_like_ulaw(SPEECH_MS))
    await call.wait_heard(400, timeout=10)
    await call.hang_up()


async def _junk_frame(call: SimulatedCall, realtime: RealtimeSimulator) -> None:
    await _session(realtime)
    for junk in ("not json", b"\x00\x01binary", '{"event":"media","media":{"payload":"@@@"}}', '{"event":"nope"}'):
        await call.send_raw(junk)
    await asyncio.sleep(0.3)
    await call.hang_up()


async def _realtime_drop_mid_call(call: SimulatedCall, realtime: RealtimeSimulator) -> None:
    """The service drops the session after the first answer; the caller asks again and the new session answers."""
    first = await _session(realtime)
    call.say(speech_like_ulaw(SPEECH_MS))
    await call.wait_heard(realtime.answer_ms, timeout=10)
    await asyncio.sleep(0.1)
    await first.drop(1011)
    second = await realtime.wait_for_session(1, timeout=5)
    await second.wait_for("conversation.item.create", timeout=5)
    heard_before = call.heard_ms()
    call.say(speech_like_ulaw(SPEECH_MS))
    await call.wait_heard(heard_before + realtime.answer_ms, timeout=10)
    await asyncio.sleep(0.1)
    await call.hang_up()


async def _goodbye(call: SimulatedCall, realtime: RealtimeSimulator) -> None:
    """The caller says goodbye; the model says it back and calls `end_call`; the bridge hangs up once it has played."""
    await _session(realtime)
    call.say(speech_like_ulaw(SPEECH_MS))
    await call.wait_for_step("hung-up", timeout=10)
    await asyncio.sleep(0.1)


async def _person_picks_up(call: SimulatedCall, realtime: RealtimeSimulator) -> None:
    """An outbound call: the callee says "hello?", AMD says human, the model greets them; they hear it and hang up."""
    await call.wait_heard(realtime.answer_ms, timeout=10)
    await asyncio.sleep(0.1)
    await call.hang_up()


async def _voicemail_picks_up(call: SimulatedCall, realtime: RealtimeSimulator) -> None:
    """An outbound call: a greeting and a beep, AMD says machine_end_beep, the model leaves the message, the bridge hangs up."""
    await call.wait_for_step("hung-up", timeout=15)
    await asyncio.sleep(0.1)


GOODBYE = ScriptedAnswer(speech_like_pcm16(ANSWER_MS), "Goodbye!", calls=(ScriptedCall("end_call"),))

SCENARIOS = (
    RecordedScenario("conversation", _one_answer),
    RecordedScenario("greeting", _greeting, number=GREETED_NUMBER),
    RecordedScenario("barge-in-mid-answer", _barge_in_mid_answer),
    RecordedScenario("barge-in-after-answer", _barge_in_after_answer),
    RecordedScenario("dtmf", _dtmf),
    RecordedScenario("hang-up-mid-answer", _hang_up_mid_answer),
    RecordedScenario("junk-frame", _junk_frame),
    RecordedScenario("preview-dialect", _one_answer, dialect="preview"),
    RecordedScenario("realtime-drop-mid-call", _realtime_drop_mid_call),
    RecordedScenario("goodbye-end-call", _goodbye, answers=(GOODBYE,)),
    RecordedScenario("outbound-person", _person_picks_up, number=REMINDER_NUMBER, answerer=Answerer("person")),
    RecordedScenario(
        "outbound-voicemail", _voicemail_picks_up, number=REMINDER_NUMBER, answerer=Answerer("voicemail", greeting_ms=600)
    ),
)


async def record(scenario: RecordedScenario, folder: Path) -> Path:
    """Run one scenario through the real bridge with recording on; the recording lands at `folder/<name>.jsonl`."""
    with tempfile.TemporaryDirectory() as scratch:
        config = parse_config(CONFIG + f'\n[recording]\nfolder = "{Path(scratch).as_posix()}"\n', "recorded_calls.CONFIG")
        async with (
            RealtimeSimulator(
                answer_audio=speech_like_pcm16(ANSWER_MS), answers=scenario.answers, require_key=API_KEY
            ) as realtime,
            TwilioApiSimulator(auth_token=AUTH_TOKEN, account_sid=ACCOUNT_SID) as api,
        ):
            url = realtime.preview_url if scenario.dialect == "preview" else realtime.url
            settings = settings_from_env(
                {
                    "PUBLIC_URL": PUBLIC_URL,
                    "TWILIO_AUTH_TOKEN": AUTH_TOKEN,
                    "TWILIO_API_URL": api.url,
                    "TWILIO_ACCOUNT_SID": ACCOUNT_SID if scenario.answerer is not None else "",
                    "OPENAI_API_KEY": API_KEY,
                    "REALTIME_URL": url,
                    "REALTIME_API": scenario.dialect,
                }
            )
            async with serve_app(settings, config) as (bridge_url, app):
                if scenario.answerer is not None:
                    call = await _placed(api, app, bridge_url, scenario)
                else:
                    call = SimulatedCall(
                        bridge_url=bridge_url,
                        public_url=PUBLIC_URL,
                        auth_token=AUTH_TOKEN,
                        call_sid="CA" + hashlib.sha256(scenario.name.encode()).hexdigest()[:32],
                        to_number=scenario.number,
                    )
                    api.register(call)
                    await call.dial()
                    await call.connect()
                try:
                    await scenario.run(call, realtime)
                finally:
                    await call.close()
        (made,) = Path(scratch).glob("*.jsonl")
        target = folder / f"{scenario.name}.jsonl"
        folder.mkdir(parents=True, exist_ok=True)
        shutil.move(made, target)
        return target


async def _placed(api: TwilioApiSimulator, app: FastAPI, bridge_url: str, scenario: RecordedScenario) -> SimulatedCall:
    """The bridge places the scenario's call; the REST stand-in rings its answerer, whose side of the call this is."""
    assert scenario.answerer is not None
    api.place_calls_on(bridge_url, PUBLIC_URL)
    api.answerers[CALLEE] = scenario.answerer
    await app.state.outbound.place(OutboundRequest(scenario.number, CALLEE, REMINDER_CONTEXT))
    (placed,) = await api.wait_placed(1)
    while placed.call is None:
        await asyncio.sleep(0.01)
    return placed.call


async def record_all(folder: Path, names: list[str] | None = None) -> list[Path]:
    unknown = set(names or ()) - {scenario.name for scenario in SCENARIOS}
    if unknown:
        raise ValueError(f"no such scenario: {', '.join(sorted(unknown))}")
    return [await record(scenario, folder) for scenario in SCENARIOS if not names or scenario.name in names]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Record the calls of tests/recordings/ again.")
    parser.add_argument("folder", type=Path, nargs="?", default=Path("tests/recordings"))
    parser.add_argument("names", nargs="*", help=f"only these: {', '.join(s.name for s in SCENARIOS)}")
    args = parser.parse_args(argv)
    for path in asyncio.run(record_all(args.folder, args.names)):
        print(f"recorded {path} ({path.stat().st_size // 1024} KB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
