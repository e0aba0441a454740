"""Exchange's event subscriptions: every case event of the node's services onto the up-log, and the
commands they issue for cases owned elsewhere routed toward the owner; each idempotent, so the bus
may deliver again (the up-log is unique by event id, a command's leg by its key, delivery by the inbox).
"""

from __future__ import annotations

from services.common.events import decode
from services.common.service import BusEvent, Subscription
from services.exchange import domain
from services.exchange.handlers import Exchange


class ExchangeConsumers:
    """Decode an event of the node's bus and call the exchange's use case."""

    def __init__(self, exchange: Exchange) -> None:
        self._exchange = exchange

    def record_local(self, event: BusEvent) -> None:
        # Idempotent by event id (up_log.event_id is unique), so bus redelivery is harmless.
        self._exchange.record_local(decode(event), event.body)

    def route_command(self, event: BusEvent) -> None:
        # A non-owner's request (a citizen's evaluation at the registering node, a supervisor's 督办):
        # routed to the owner, or quarantined here (peer "local") when it cannot get anywhere.
        self._exchange.record_command(event.body)

    def subscriptions(self) -> list[Subscription]:
        found = [
            Subscription("exchange", source, event_type, self.record_local)
            for source, types in domain.UP_EVENT_TYPES.items()
            for event_type in types
        ]
        return found + [
            Subscription("exchange", source, "command", self.route_command) for source in domain.COMMAND_SOURCES
        ]
