"""The one record every layer emits, so tracking can listen without the emitters knowing it exists."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

# Trial-level kinds come from `trial.run_trial`; study-level kinds from the search's worker (`search.worker`).
# Payloads are typed where they carry an outcome (TrialResult, Ending, RoundRecord): see ARCHITECTURE.md.
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


def with_context(listeners: Iterable[Listener], **context: Any) -> list[Listener]:
    """Wrap listeners so each event's data also carries `context` (e.g. trial_number, study_name).

    The trial knows nothing of Optuna; the search adds the trial number this way.
    """

    def wrap(listener: Listener) -> Listener:
        return lambda event: listener(Event(event.kind, event.step, {**context, **event.data}))

    return [wrap(listener) for listener in listeners]
