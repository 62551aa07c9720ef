"""An event as the tracker's spool file holds it (one JSON line) and back.

The events carry typed values (the `TrialResult` of `trial_end` and `trial_finished`, their `records.Ending`, the
`RoundRecord` of `round`); a spool record holds their plain form. This is the one place that turns them into
plain values and reads them back, spool files written by older versions included (results as dicts, states as
names): every handler of the tracker sees the typed event.
"""

from __future__ import annotations

import enum
from typing import Any

from elalora_auto.events import Event
from elalora_auto.records import Ending, RoundRecord
from elalora_auto.spec import TrialResult
from elalora_auto.tracking.spool import Record

LIVE_KEYS = ("study", "backend")  # event values that are live objects: kept in memory, never spooled


def to_record(event: Event, t_ms: int) -> Record:
    """The spool record of `event` (its live objects left out), stamped `t_ms`."""
    data = {key: _plain(value) for key, value in event.data.items() if key not in LIVE_KEYS}
    return {"kind": event.kind, "step": int(event.step), "t_ms": t_ms, "data": data}


def from_record(record: Record) -> Event:
    """The typed event a spool record holds (the record's `t_ms` stays with the record)."""
    data = dict(record["data"])
    if data.get("result") is not None:
        data["result"] = TrialResult.from_dict(data["result"])
    if "state" in data:
        data["state"] = Ending.named(data["state"])
    if "record" in data:
        data["record"] = RoundRecord.from_dict({"step": record["step"], **data["record"]})
    return Event(record["kind"], int(record["step"]), data)


def _plain(value: Any) -> Any:
    if isinstance(value, (TrialResult, RoundRecord)):
        return value.to_dict()
    return value.name if isinstance(value, enum.Enum) else value  # a state by its name
