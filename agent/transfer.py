"""``transfer_call`` on a Twilio line: the call goes to a person once the agent has said so.

The operator names the destinations the agent may transfer to
(``VOICEFORGE_TRANSFER_TARGETS="sales=+15550100,support=+15550111"``); the model
picks one by name, never a number (a caller cannot talk the agent into dialling
anywhere). The tool only chooses: the agent then says it is transferring, and once
that was heard the bridge asks Twilio to redirect the live call to
``<Dial>number</Dial>`` (Twilio's "update a call" REST request, signed with the
account's auth token), which ends the media stream.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import quote
from xml.sax.saxutils import escape

import httpx

logger = logging.getLogger("voiceforge.telephony")

REDIRECT_TIMEOUT_S = 10.0


@dataclass(slots=True)
class TwilioTransfer:
    """One phone call's transfer: the destination chosen, then the redirect."""

    targets: Mapping[str, str]
    """Destination name (lower case) → the number Twilio dials."""
    account_sid: str
    auth_token: str = field(repr=False)
    call_sid: str
    api_url: str = "https://api.twilio.com"
    chosen: str | None = None
    """The destination the agent is transferring to, once the tool ran."""

    async def choose(self, destination: str) -> str:
        """The ``transfer_call`` tool's work: a known destination, or an error the
        model reads (naming the ones there are)."""
        name = " ".join(destination.lower().split())
        if name not in self.targets:
            known = ", ".join(sorted(self.targets))
            raise ValueError(f"no destination named {destination[:64]!r}; there are: {known}")
        self.chosen = name
        return f"Transferring the caller to {name}: tell them so in one short sentence."

    async def redirect(self) -> bool:
        """Send the call to the chosen number; False (logged) when Twilio refuses."""
        if self.chosen is None:
            return False
        number = self.targets[self.chosen]
        twiml = f"<Response><Dial>{escape(number)}</Dial></Response>"
        account, call = quote(self.account_sid, safe=""), quote(self.call_sid, safe="")
        url = f"{self.api_url.rstrip('/')}/2010-04-01/Accounts/{account}/Calls/{call}.json"
        try:
            async with httpx.AsyncClient(timeout=REDIRECT_TIMEOUT_S) as http:
                reply = await http.post(
                    url, data={"Twiml": twiml}, auth=(self.account_sid, self.auth_token)
                )
        except httpx.HTTPError as error:
            logger.error("transfer of call %s failed: %s", self.call_sid[:64], error)
            return False
        if reply.status_code >= 300:
            logger.error(
                "transfer of call %s refused: HTTP %d", self.call_sid[:64], reply.status_code
            )
            return False
        logger.info("call %s transferred to %s", self.call_sid[:64], self.chosen)
        return True


def parse_targets(value: str | None) -> dict[str, str]:
    """``name=number,name=number`` → {name: number}; raises ValueError when malformed."""
    targets: dict[str, str] = {}
    for item in (value or "").split(","):
        if not item.strip():
            continue
        name, equals, number = item.partition("=")
        if not equals or not name.strip() or not number.strip():
            raise ValueError(f"transfer target {item.strip()!r} is not name=number")
        targets[" ".join(name.lower().split())] = number.strip()
    return targets
