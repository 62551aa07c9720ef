"""The one record every layer emits, so tracking can listen without the emitters knowing it exists."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

# Trial-level kinds come from `trial.run_trial`; study-level kinds from `search.study`.
TRIAL_KINDS = ("trial_start", "train_step", "eval", "round", "trial_end")
STUDY_KINDS = ("study_start", "trial_finished", "study_end")


@dataclass(frozen=True)
class Event:
    kind: str
    step: int = 0
    data: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in TRIAL_KINDS + STUDY_KINDS:
            raise ValueError(f"unknown event kind {self.kind!r}; expected one of {TRIAL_KINDS + STUDY_KINDS}")


Listener = Callable[[Event], None]


def emit(listeners: Iterable[Listener], event: Event) -> None:
    """Deliver an event to every listener; listeners only observe, so their return values are ignored."""
    for listener in listeners:
        listener(event)
