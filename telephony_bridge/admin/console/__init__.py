"""The operator console under `/console/`: server-rendered page shells whose script reads and acts through the admin API.

The pages hold no data of their own: each is a shell that `console.js` fills from `/admin/...` with
the session cookie, so the console can do nothing the admin API does not allow, and the API stays the
one way in. Off (every route 404) when `BRIDGE_ADMIN_TOKEN` is not set.
"""

from telephony_bridge.admin.console.routes import console_router

__all__ = ["console_router"]
