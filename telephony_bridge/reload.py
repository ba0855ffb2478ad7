"""Reloading the configuration file while calls go on (SIGHUP, `telephony-bridge reload`, `POST /admin/reload`).

A call keeps the `CallProfile` it started with (its controller holds it), so a reload only swaps the
switchboard's configuration: new calls get the new file, live ones never notice. A file with problems is
refused with the same one-line errors as `check`, and the configuration in force stays. `[http]`,
`[recording] folder` and `[call_log] path` are set up once when the server starts; a reload that changes
them says they wait for a restart.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from telephony_bridge.config import BridgeConfig, Dialect, load_config
from telephony_bridge.errors import ConfigError, ConfigErrors

log = logging.getLogger(__name__)

RESTART_ONLY = ("http", "recording", "call_log", "campaigns")
"""Sections the running server set up at start: a reload keeps their old values until the next start."""


@dataclass(frozen=True)
class ReloadOutcome:
    ok: bool
    digest: str
    """The hash of the configuration in force after the reload: the new one, or the old one kept."""
    problems: tuple[str, ...] = ()
    """A refused file's problems, one `file: key: reason` line each."""
    restart_needed: tuple[str, ...] = ()
    """Sections changed in the file that take effect only at the next start."""


class ConfigReloader:
    """Re-reads the file at `path` and hands a valid configuration to `apply` (the switchboard's `reconfigure`)."""

    def __init__(
        self,
        path: Path,
        config: BridgeConfig,
        apply: Callable[[BridgeConfig], None],
        on_outcome: Callable[[Literal["ok", "refused"], str], None] = lambda outcome, digest: None,
        dialect: Dialect | None = None,
    ) -> None:
        self.path = path
        self.dialect = dialect
        """The Realtime dialect a reloaded file is checked against, as at start-up."""
        self.config = config
        """The configuration in force for new calls."""
        self._started_with = config
        self._apply = apply
        self._on_outcome = on_outcome
        self._lock = asyncio.Lock()

    async def reload(self) -> ReloadOutcome:
        """Read the file off the event loop, then swap it in; two reloads at once run one after the other."""
        async with self._lock:
            try:
                config = await asyncio.to_thread(load_config, self.path, dialect=self.dialect)
            except ConfigError as error:
                problems = error.problems if isinstance(error, ConfigErrors) else (error,)
                lines = tuple(str(problem) for problem in problems)
                for line in lines:
                    log.warning("configuration reload refused, the running one stays: %s", line)
                self._on_outcome("refused", self.config.digest)
                return ReloadOutcome(False, self.config.digest, lines)
            restart_needed = tuple(
                section for section in RESTART_ONLY if getattr(config, section) != getattr(self._started_with, section)
            )
            self.config = config
            self._apply(config)
            self._on_outcome("ok", config.digest)
            log.info("configuration reloaded from %s: %d numbers, hash %s", self.path, len(config.numbers), config.digest[:12])
            if restart_needed:
                log.warning("configuration reload: [%s] changed but take effect only at the next start",
                            "], [".join(restart_needed))
            return ReloadOutcome(True, config.digest, (), restart_needed)
