"""The admin API under `/admin/`: the one way to read and act on a running bridge (docs/admin-api.md).

The `telephony-bridge` command (`calls --live`, `calls end`, `reload`) and any console use it; it is off unless
`BRIDGE_ADMIN_TOKEN` is set.
"""

from telephony_bridge.admin.api import admin_router

__all__ = ["admin_router"]
