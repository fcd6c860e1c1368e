"""The protocol's `Ports` in the real world: the mode item, the drain, the wall clock.

`shared.cutover.protocol.SwitchProtocol` touches AWS only through its ports,
so it is unit-tested with fakes; these are the real ones. The mode item is
written through `shared.store.mode.ModeStore` (optimistic concurrency);
drains and catch-up are measured by `shared.streams.drain` from the
consumers' receipts, polled every `DRAIN_POLL_S`.

The clients are made once, before the gate, and every wait reuses them:
made inside each drain, during the freeze, they added 0.1-0.6 s to the
freeze window (measured before clients shared one model loader; a client
still costs a few milliseconds).
"""

from __future__ import annotations

import time

from shared.core.errors import DrainTimeout, TransientError
from shared.core.settings import Settings
from shared.cutover.protocol import DRAIN_POLL_S, storable
from shared.store.mode import ModeState, ModeStore


class AwsPorts:
    """The real world: the mode item in the control table, the drain module, the wall clock."""

    def __init__(self, settings: Settings) -> None:
        from shared.core import aws

        self.settings = settings
        self.dynamodb = aws.dynamodb(settings)
        self.streams = aws.streams(settings)
        self.store = ModeStore(self.dynamodb, settings.control_table)

    def read_mode(self) -> ModeState:
        return self.store.read(consistent=True)

    def write_mode(self, state: ModeState, expected_version: int) -> ModeState:
        return self.store.write(storable(state), expected_version)

    def wait_drained(self, direction: str, timeout_s: float) -> bool:
        from shared.streams import drain

        try:
            drain.wait_drained(self.settings, direction, timeout_s, poll_s=DRAIN_POLL_S,
                               dynamodb=self.dynamodb, streams=self.streams)
        except DrainTimeout:
            return False
        return True

    def wait_caught_up(self, direction: str, timeout_s: float) -> bool:
        from shared.streams import drain

        try:
            return drain.wait_caught_up(self.settings, direction, timeout_s, poll_s=DRAIN_POLL_S,
                                       dynamodb=self.dynamodb, streams=self.streams)
        except TransientError:
            return False

    def clock(self) -> float:
        return time.time()

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)
