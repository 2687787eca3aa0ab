"""Per-batch progress from workers to the driver.

Workers are busy inside `label` and cannot answer calls, so they push small messages to this
actor (fire and forget: a worker never waits for the driver) and the driver drains it a few times
a second. It is looked up by name rather than passed as a handle: Ray cannot restart an actor whose
constructor arguments include another actor's handle.

Both ends coalesce, latest value wins: a worker sends at most one message per
`SEND_INTERVAL_S` (a 1,000-image shard at batch 8 reports 125 times; at 1,000 images/s per GPU
that would be 125 messages a second per actor), and the board keeps only the newest message per
shard, so a drain returns at most one message per shard in flight however many arrived. Progress
messages are cumulative within a shard attempt, so dropping all but the newest loses nothing.
"""
from __future__ import annotations

import time
from typing import Any, Callable, Optional

# (shard name, attempt, samples done, ok, errors) -- cumulative within the shard attempt
Message = tuple[str, int, int, int, int]

SEND_INTERVAL_S = 0.25  # at most ~4 messages a second per worker


class ProgressBoard:
    def __init__(self) -> None:
        self.latest: dict[str, Message] = {}  # shard -> newest message since the last drain
        self.received = 0  # messages put since start (for the dispatch benchmark)

    def put(self, message: Message) -> None:
        self.received += 1
        old = self.latest.get(message[0])
        if old is None or old[1] <= message[1]:  # a late message of an older attempt never wins
            self.latest[message[0]] = message

    def drain(self) -> list[Message]:
        out, self.latest = list(self.latest.values()), {}
        return out

    def stats(self) -> dict[str, int]:
        return {"received": self.received}


class ProgressSender:
    """The worker side: `send` is called per batch; a message leaves at most every `interval_s`.

    A withheld message is not lost: the next send carries the newer cumulative counts, and the
    shard's result carries its final ones.
    """

    def __init__(self, put: Callable[[Message], Any], interval_s: float = SEND_INTERVAL_S,
                 clock: Callable[[], float] = time.monotonic):
        self._put = put
        self.interval_s = interval_s
        self._clock = clock
        self._last_sent = float("-inf")
        self._last_key: Optional[tuple[str, int]] = None
        self.sent = 0

    def send(self, message: Message) -> bool:
        now = self._clock()
        key = (message[0], message[1])
        # The first message of a new shard attempt always goes: it tells the watchdog the shard started.
        if key == self._last_key and now - self._last_sent < self.interval_s:
            return False
        self._last_sent, self._last_key = now, key
        self._put(message)
        self.sent += 1
        return True


def remote_put(board: Any) -> Callable[[Message], Any]:
    """Fire-and-forget `board.put` without a task event per call (they pile up in the GCS)."""
    method = board.put.options(enable_task_events=False)
    return method.remote


def board_handle(name: str) -> Any:
    import ray

    return ray.get_actor(name)
