"""The errors an operator must act on; what a caller sends wrong is logged and counted, not raised."""


class BridgeError(Exception):
    """Base of every error the bridge raises on purpose."""


class ConfigError(BridgeError):
    """A configuration file or environment variable is invalid; start-up stops with this message."""

    def __init__(self, source: str, key: str, reason: str) -> None:
        self.source = source
        self.key = key
        self.reason = reason
        super().__init__(f"{source}: {key}: {reason}")


class ConfigErrors(ConfigError):
    """Several configuration problems found at once; its message is one `file: key: reason` line per problem."""

    def __init__(self, problems: list[ConfigError]) -> None:
        first = problems[0]
        super().__init__(first.source, first.key, first.reason)
        self.problems = tuple(problems)
        self.args = ("\n".join(str(problem) for problem in problems),)


class RealtimeConnectError(BridgeError):
    """The Realtime service could not be reached or refused the session.

    `retryable` is False when another try cannot succeed (a wrong key, an unknown deployment).
    """

    def __init__(self, message: str, *, retryable: bool = True) -> None:
        super().__init__(message)
        self.retryable = retryable


class RecordingError(BridgeError):
    """A call recording cannot be read: not a recording, a newer format, or a damaged line (named)."""

    def __init__(self, path: str, reason: str) -> None:
        self.path = path
        self.reason = reason
        super().__init__(f"{path}: {reason}")


class CallLogError(BridgeError):
    """The call log cannot be read: no such file, not a call log, or written by a newer bridge."""

    def __init__(self, path: str, reason: str) -> None:
        self.path = path
        self.reason = reason
        super().__init__(f"{path}: {reason}")


class TwilioRestError(BridgeError):
    """A request to Twilio's REST API failed, after any retries the request allowed.

    `status` is the HTTP status (None when no answer came: refused, reset, timed out), `code` Twilio's error
    code from the JSON body (20404: no such call, 20003: wrong credentials, 20429: too many requests).
    `retryable` says whether another try would be safe and might succeed (429; a 5xx or no answer to a request
    that is harmless twice); a 4xx is final, and so is a 5xx to a `<Dial>` that may have gone through.
    The message names the method, the path and Twilio's answer, never the credentials.
    """

    def __init__(self, message: str, *, status: int | None, code: int | None, retryable: bool) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.retryable = retryable


class TwilioCallGone(TwilioRestError):
    """Twilio answered 20404 for a call: it has ended already (the caller hung up first), so there is nothing to act on."""
