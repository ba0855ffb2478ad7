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
