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


class RealtimeConnectError(BridgeError):
    """The Realtime service could not be reached or refused the session."""
