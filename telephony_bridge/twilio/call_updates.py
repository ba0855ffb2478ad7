"""The controller's hang-ups and transfers, carried to Twilio's REST API; what went wrong comes back as an event.

A hang-up is `Status=completed` on the call, or, with a goodbye (an operator's), TwiML that says it and
hangs up; a transfer replaces the call's TwiML with a `<Dial>`
whose whisper and `action` are our routes, named by a single-use transfer id. Twilio ends the
media stream either way. A request that fails is retried only where that is safe (see
`twilio_rest`); a failure reaches the controller as `HangUpFailed` or `TransferFailed`, so the
caller is never left in silence, and is logged without credentials.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from telephony_bridge.call.events import CallUpdate, Event, HangUp, HangUpFailed, Transfer, TransferFailed
from telephony_bridge.config import Settings
from telephony_bridge.errors import ConfigError, TwilioCallGone, TwilioRestError
from telephony_bridge.tls import tls_context
from telephony_bridge.twilio.rest import Observer, TwilioRest
from telephony_bridge.twilio.transfers import Transfers
from telephony_bridge.twilio.webhook import DIAL_ENDED_PATH, WHISPER_PATH, refusal_twiml, transfer_twiml

if TYPE_CHECKING:
    from telephony_bridge.call.pump import Call

log = logging.getLogger(__name__)


class CallUpdates:
    def __init__(self, settings: Settings, transfers: Transfers[Any]) -> None:
        self._settings = settings
        self.transfers = transfers

    async def carry_out(self, call: Call, update: CallUpdate, observe: Observer | None) -> Event | None:
        """Send `update` for `call`; `None` when Twilio took it, else the event that tells the controller why not."""
        transfer_id = None
        try:
            tls = await tls_context()
            async with TwilioRest.from_settings(self._settings, call.account_sid or None, observe=observe, tls=tls) as rest:
                account_sid = self._settings.twilio_account_sid or call.account_sid
                if isinstance(update, HangUp) and update.goodbye:
                    await rest.update_call(account_sid, call.call_sid, twiml=refusal_twiml(update.goodbye))
                elif isinstance(update, HangUp):
                    await rest.update_call(account_sid, call.call_sid, status="completed")
                elif isinstance(update, Transfer):
                    transfer_id = self.transfers.issue(call, update.target_name, update.summary, fallback=update.fallback)
                    base = self._settings.public_url.rstrip("/")
                    twiml = transfer_twiml(
                        update.target,
                        f"{base}{WHISPER_PATH}?transfer={transfer_id}",
                        f"{base}{DIAL_ENDED_PATH}?transfer={transfer_id}",
                    )
                    await rest.update_call(account_sid, call.call_sid, twiml=twiml)
            return None
        except (TwilioRestError, ConfigError) as error:
            if transfer_id is not None:
                self.transfers.cancel(transfer_id)
            gone = isinstance(error, TwilioCallGone)
            log.log(logging.INFO if gone else logging.WARNING, "call %s: Twilio did not take the %s: %s",
                    call.call_sid, type(update).__name__.lower(), error)
            if isinstance(update, HangUp):
                return HangUpFailed(str(error), gone=gone)
            return TransferFailed("the call has ended" if gone else str(error))
