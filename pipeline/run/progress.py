"""Per-batch progress from workers to the driver.

Workers are busy inside `label` and cannot answer calls, so they push small messages to this
actor (fire and forget: a worker never waits for the driver) and the driver drains it a few times
a second. It is looked up by name rather than passed as a handle: Ray cannot restart an actor whose
constructor arguments include another actor's handle.
"""
from __future__ import annotations

from typing import Any

# (shard name, attempt, samples done, ok, errors) -- cumulative within the shard attempt
Message = tuple[str, int, int, int, int]


class ProgressBoard:
    def __init__(self) -> None:
        self.messages: list[Message] = []

    def put(self, message: Message) -> None:
        self.messages.append(message)

    def drain(self) -> list[Message]:
        out, self.messages = self.messages, []
        return out


def board_handle(name: str) -> Any:
    import ray

    return ray.get_actor(name)
