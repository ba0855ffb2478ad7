"""One TLS context for the process's HTTP clients, loaded once and off the event loop.

Loading the system's CA certificates takes about 40 ms of CPU, and `httpx.AsyncClient()` does it for
each client it makes (63 ms measured): on the event loop, every call's audio would stall that long
each time a call hangs up, transfers or calls a tool. Clients given this context load nothing.
"""

from __future__ import annotations

import asyncio
import functools
import ssl


@functools.cache
def _context() -> ssl.SSLContext:
    return ssl.create_default_context()


async def tls_context() -> ssl.SSLContext:
    return await asyncio.to_thread(_context)
