"""The TwiML the bridge answers Twilio with: the stream, and what follows it.

`<Connect><Stream>` blocks while the stream is open. Its `action` URL is requested when the
stream ends, and what the bridge answers there is what the caller hears next, chosen by why the
stream ended: nothing (a goodbye, a hang-up), the fallback message (the model could not be
reached), a short apology (the bridge shut down mid-call) (docs/protocols.md section 2). The
stream URL carries no query string: per-call data travels as `<Parameter>`s and comes back in
`start.customParameters`. A transfer is a `<Dial>` whose whisper and `action` are our routes,
named by the transfer's single-use id.
"""

from __future__ import annotations

from twilio.twiml.voice_response import Connect, Dial, VoiceResponse

STREAM_ENDED_PATH = "/twilio/stream-ended"
WHISPER_PATH = "/twilio/whisper"
DIAL_ENDED_PATH = "/twilio/dial-ended"
STREAM_STATUS_PATH = "/twilio/stream-status"
"""Our routes Twilio calls back about a call: after its stream, its stream's events, and for a transfer (by its id)."""

CALLED_NUMBER_PARAMETER = "to"
STREAM_TOKEN_PARAMETER = "token"
OUTBOUND_PARAMETER = "outbound"
"""Names the outbound call a stream belongs to: its token is bound to this id, as the CallSid is unknown when it is issued."""
OUTBOUND_AMD_PATH = "/twilio/outbound-amd"
OUTBOUND_STATUS_PATH = "/twilio/outbound-status"
"""An outbound call's asynchronous AMD result and its status callbacks (`?outbound=<id>`), signed like the webhook."""


DIAL_TIMEOUT_S = 25
"""Seconds a transfer rings before it counts as unanswered: about five rings."""


def stream_twiml(
    stream_url: str, called_number: str, stream_token: str, stream_ended_url: str, status_url: str | None = None,
    notice: str | None = None,
    outbound_id: str | None = None,
) -> str:
    """Connect the call to our Media Stream; when it ends, Twilio asks `stream_ended_url` what comes next.

    With `status_url`, Twilio posts the stream's events there (`statusCallback`), its errors among them: a
    stream that failed to connect or broke (31920, 31921) is otherwise seen only in Twilio's console.

    A `notice` (that the call is recorded) is a `<Say>` before `<Connect>`: Twilio runs verbs in order and
    opens the stream only once the `<Say>` has been spoken, so no word of the model can come before it or
    over it, whatever the model or the network do.
    """
    response = VoiceResponse()
    if notice:
        response.say(notice)
    connect = Connect(action=stream_ended_url)
    if status_url is None:
        stream = connect.stream(url=stream_url)
    else:
        stream = connect.stream(url=stream_url, status_callback=status_url, status_callback_method="POST")
    stream.parameter(name=CALLED_NUMBER_PARAMETER, value=called_number)
    stream.parameter(name=STREAM_TOKEN_PARAMETER, value=stream_token)
    if outbound_id is not None:
        stream.parameter(name=OUTBOUND_PARAMETER, value=outbound_id)
    response.append(connect)
    return str(response)


def say_twiml(message: str) -> str:
    """Say `message`; the call ends after it."""
    response = VoiceResponse()
    response.say(message)
    return str(response)


def transfer_twiml(target: str, whisper_url: str, dial_ended_url: str) -> str:
    """Dial `target` (E.164 or sip:); whoever answers first hears the whisper, then the two are joined."""
    response = VoiceResponse()
    dial = Dial(action=dial_ended_url, timeout=DIAL_TIMEOUT_S)
    if target.startswith("sip:"):
        dial.sip(target, url=whisper_url)
    else:
        dial.number(target, url=whisper_url)
    response.append(dial)
    return str(response)


def refusal_twiml(message: str) -> str:
    """Say `message` and hang up, without streaming: for a busy line or a bridge shutting down."""
    response = VoiceResponse()
    response.say(message)
    response.hangup()
    return str(response)


def hangup_twiml() -> str:
    """Hang up at once, saying nothing: for a webhook that replays one answered already."""
    response = VoiceResponse()
    response.hangup()
    return str(response)
