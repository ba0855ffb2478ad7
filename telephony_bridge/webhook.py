"""The TwiML the Voice webhook answers with.

`<Connect><Stream>` blocks while the stream is open; when the bridge closes the socket, Twilio
goes on to the next verb. The `<Say>` after `</Connect>` is therefore what a caller hears when
the bridge cannot serve them (docs/protocols.md section 2). The stream URL carries no query string: per-call
data travels as `<Parameter>`s and comes back in `start.customParameters`.
"""

from __future__ import annotations

from twilio.twiml.voice_response import Connect, VoiceResponse

CALLED_NUMBER_PARAMETER = "to"
STREAM_TOKEN_PARAMETER = "token"


def stream_twiml(stream_url: str, called_number: str, stream_token: str, fallback_message: str) -> str:
    """Connect the call to our Media Stream; say the fallback message if the stream ends early."""
    response = VoiceResponse()
    connect = Connect()
    stream = connect.stream(url=stream_url)
    stream.parameter(name=CALLED_NUMBER_PARAMETER, value=called_number)
    stream.parameter(name=STREAM_TOKEN_PARAMETER, value=stream_token)
    response.append(connect)
    response.say(fallback_message)
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
