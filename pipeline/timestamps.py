"""The timestamp format of every record the pipeline writes (completion records, run locks)."""
from __future__ import annotations

import datetime as dt


def utc_now_iso() -> str:
    """Now, in UTC, as ISO 8601 to the millisecond (`2024-05-01T12:00:00.123+00:00`).

    The explicit offset keeps stamps from hosts in different time zones comparable, which lock
    staleness relies on.
    """
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds")
