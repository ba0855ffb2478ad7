"""Where the bridge keeps what outlives one request: once-only claims, the call log, the fleet's live calls.

Two back ends behind one interface (`Store`). Without `DATABASE_URL` the bridge is one process on one
machine: claims live in that process (the switchboard's own sets) and the call log is the SQLite file of
`[call_log] path`, as always. With `DATABASE_URL=postgresql://...` every instance of a fleet shares one
PostgreSQL (`PostgresStore`): claims are rows with a unique key, the call log is one set of tables, the
live calls are a registry with a heartbeat, and one instance reaches another through `LISTEN/NOTIFY`.
docs/scaling.md gives the figures and the reasons.
"""

from telephony_bridge.store.base import LiveCall, Store, StoreUnavailable
from telephony_bridge.store.postgres import PostgresStore, redact

__all__ = ["LiveCall", "PostgresStore", "Store", "StoreUnavailable", "redact"]
