"""The outbound demo (`telephony-bridge demo --outbound`): an appointment reminder to a person, then to a voicemail.

The real bridge places both calls through Twilio's REST API, played by `TwilioApiSimulator`
(`TWILIO_API_URL`), which answers each with a simulated callee: a person who says "hello?", or an
answering machine that plays its greeting and a beep, then posts Twilio's signed AMD and status
callbacks. The model is the Realtime simulator, so the words are speech-like noise; the timeline says
what each side would be saying. The two figures printed are what a callee feels: from AMD's "human"
to the model's first audio at the callee, and from the callee's first "hello" to that audio (AMD's
own wait for the end of the greeting included).
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

from telephony_bridge.config import parse_config, settings_from_env
from telephony_bridge.demo import DEMO_KEY, DEMO_NUMBER, DEMO_TOKEN, PUBLIC_URL, Timeline
from telephony_bridge.outbound.placing import OutboundCalls, OutboundOutcome, OutboundRequest
from telephony_bridge.testing.bridge_server import serve_app
from telephony_bridge.testing.realtime_simulator import RealtimeSimulator, ScriptedAnswer, speech_like_pcm16
from telephony_bridge.testing.twilio_api import Answerer, PlacedCall, TwilioApiSimulator

PERSON = "+15557654321"
VOICEMAIL = "+15557654322"
CONTEXT = {"name": "Ada", "appointment": "Tuesday at 10:00"}
OUTBOUND_CONFIG = f"""
[defaults]
instructions = "You answer the phone."

[numbers."{DEMO_NUMBER}"]
instructions = "You are the reminder line of Bright Smile Dental, calling {{name}} about their appointment. Be brief."
greeting = "Hello {{name}}, this is Bright Smile Dental with a reminder: your appointment is {{appointment}}."
voicemail_message = "Hi {{name}}, Bright Smile Dental here: your appointment is {{appointment}}. See you then!"

[call_log]
path = ""
"""
GREETING_MS = 2500
AMD_DELAY_S = 1.2
"""How long message-end detection listens for silence after a person's "hello?" before it says `human` (Twilio: ~1-2 s)."""


@dataclass
class OutboundFigures:
    amd_to_audio_ms: float | None
    hello_to_audio_ms: float | None
    outcomes: list[tuple[str, str, str | None]]

    def lines(self) -> list[str]:
        def ms(value: float | None) -> str:
            return f"{value:.0f} ms" if value is not None else "n/a"
        return [
            f"AMD \"human\" -> first audio at the callee   {ms(self.amd_to_audio_ms)}",
            f"callee's \"hello\" -> first audio           {ms(self.hello_to_audio_ms)} (AMD's {AMD_DELAY_S:.1f} s wait included)",
            *(f"outcome: {number}  {outcome} (AMD: {amd or '-'})" for number, outcome, amd in self.outcomes),
        ]


async def _one_call(
    outbound: OutboundCalls, api: TwilioApiSimulator, outcomes: list[OutboundOutcome], to_number: str, timeline: Timeline,
) -> PlacedCall:
    timeline.mark("bridge", f"POST Calls.json: {DEMO_NUMBER} -> {to_number} (inline TwiML, AsyncAmd, DetectMessageEnd)")
    placed = await outbound.place(OutboundRequest(DEMO_NUMBER, to_number, CONTEXT))
    callee = next(p for p in api.placed.values() if p.call_sid == placed.call_sid)
    while callee.call is None:
        await asyncio.sleep(0.01)
    await callee.call.wait_for_step("stream-opened", timeout=10)
    timeline.mark("twilio", "answered; media stream open (the model stays silent)")
    if callee.answerer.kind == "person":
        timeline.mark("callee", "\"Hello?\" (synthetic speech)")
    else:
        timeline.mark("callee", "the voicemail greeting plays, then a beep")
    while callee.amd_sent_at is None and not callee.call.over:
        await asyncio.sleep(0.01)
    timeline.mark("twilio", f"AMD callback: AnsweredBy={callee.answered_by}")
    await callee.call.wait_heard(100, timeout=10)
    what = "the greeting" if callee.answerer.kind == "person" else "the voicemail message"
    timeline.mark("model", f"speaking: {what}")
    if callee.answerer.kind == "person":
        await callee.call.wait_heard(GREETING_MS - 100, timeout=10)
        timeline.mark("callee", "heard the whole greeting; hangs up")
        await callee.call.hang_up()
    await callee.call.wait_over(timeout=30)
    hung_up_by_bridge = callee.answerer.kind != "person"
    timeline.mark("twilio", "call over" + (" (REST hang-up once the message had played)" if hung_up_by_bridge else ""))
    count = len(outcomes)
    while len(outcomes) == count or outcomes[-1].call_sid != placed.call_sid:
        await asyncio.sleep(0.01)
    timeline.mark("bridge", f"outcome: {outcomes[-1].outcome}")
    return callee


async def run_outbound_demo(*, echo: Callable[[str], None] = print) -> OutboundFigures:
    """Place the reminder to a simulated person, then to a simulated voicemail; print what happened and the figures."""
    config = parse_config(OUTBOUND_CONFIG, "demo configuration")
    loop = asyncio.get_running_loop()
    answer = ScriptedAnswer(speech_like_pcm16(GREETING_MS, f0=190.0), "Hello Ada, this is Bright Smile Dental with a reminder.")
    async with (
        RealtimeSimulator(answers=[answer], require_key=DEMO_KEY) as model,
        TwilioApiSimulator(auth_token=DEMO_TOKEN) as api,
    ):
        api.answerers[PERSON] = Answerer("person", ring_s=0.5, amd_delay_s=AMD_DELAY_S)
        api.answerers[VOICEMAIL] = Answerer("voicemail", ring_s=0.5, greeting_ms=2000, amd_delay_s=0.4)
        settings = settings_from_env({
            "OPENAI_API_KEY": DEMO_KEY, "REALTIME_URL": model.url, "TWILIO_API_URL": api.url,
            "TWILIO_ACCOUNT_SID": api.account_sid,
        })
        settings = dataclasses.replace(settings, public_url=PUBLIC_URL, twilio_auth_token=DEMO_TOKEN)
        echo(f"model:  the local Realtime simulator at {model.url}")
        echo(f"twilio: the REST API simulator at {api.url} (TWILIO_API_URL; no account needed)")
        async with serve_app(settings, config) as (bridge_url, app):
            api.place_calls_on(bridge_url, PUBLIC_URL)
            outbound: OutboundCalls = app.state.outbound
            outcomes: list[OutboundOutcome] = []
            outbound.add_outcome_listener(outcomes.append)
            echo(f"bridge: {bridge_url}\n\nreminder to a person ({PERSON})")
            person = await _one_call(outbound, api, outcomes, PERSON, Timeline(loop.time, echo))
            echo(f"\nreminder to a voicemail ({VOICEMAIL})")
            await _one_call(outbound, api, outcomes, VOICEMAIL, Timeline(loop.time, echo))
    first_audio = person.call.playback[0][0] if person.call is not None and person.call.playback else None
    figures = OutboundFigures(
        amd_to_audio_ms=(first_audio - person.amd_sent_at) * 1000 if first_audio and person.amd_sent_at else None,
        hello_to_audio_ms=(first_audio - person.hello_at) * 1000 if first_audio and person.hello_at else None,
        outcomes=[(PERSON if i == 0 else VOICEMAIL, o.outcome, o.amd_result) for i, o in enumerate(outcomes)],
    )
    echo("\nsummary")
    for line in figures.lines():
        echo(f"  {line}")
    return figures
