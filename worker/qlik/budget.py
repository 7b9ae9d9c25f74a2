"""The client's request budget for one tenant, a pure rule: at most `limit` requests in any `window` seconds
(a sliding window over the send times), so the client stays under Qlik's per-minute rate limit instead of
running into its 429s. Time is a parameter: the client passes its clock, the property tests their own."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field


@dataclass
class Budget:
    limit: int
    window: float = 60.0
    sent: deque[float] = field(default_factory=deque)  # send times inside the last window, oldest first

    def wait(self, now: float) -> float:
        """Seconds to wait before the next request may be sent (0: now)."""
        while self.sent and self.sent[0] + self.window <= now:  # the same sum as below: no rounding between them
            self.sent.popleft()
        if len(self.sent) < self.limit:
            return 0.0
        return self.sent[0] + self.window - now

    def spend(self, now: float) -> None:
        """A request was sent at `now` (after `wait(now)` said 0)."""
        self.sent.append(now)
