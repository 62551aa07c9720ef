"""The trial loop of one worker process: ask Optuna, build a TrialSpec, run it, tell Optuna, emit study events.

`Worker` holds what the loop shares between Optuna's objective and its callback (the results of this
process's trials, the run of user errors), so neither is a closure over mutable dicts. The listeners (e.g. the
MLflow tracker) are handed in by the caller; the search builds none of its own.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterable, NoReturn, Sequence

import optuna

from elalora_auto.errors import UserError
from elalora_auto.events import Event, Listener, emit, with_context
from elalora_auto.records import Ending
from elalora_auto.search.attrs import FAIL_REASON, ORIGIN, PRUNE_REASON, summary_attrs, summary_of_trial
from elalora_auto.search.plan import StudyPlan
from elalora_auto.search.pruning import RUNG_SIZES, PruningRule
from elalora_auto.search.storage import SigintHold, TrialGate, redact, redacted_settings
from elalora_auto.search.study import INTERRUPTED, USER_ERRORS, counted_trials, recover_orphans
from elalora_auto.spec import TrialResult
from elalora_auto.workdir import Workdir

MAX_CONSECUTIVE_USER_ERRORS = 3  # then the study stops with the error: its trials would all fail the same way
MAX_CONSECUTIVE_CRASHES = 3  # trials in a row failed by an unexpected exception: then the study stops too


def _failure_types() -> tuple[type[BaseException], ...]:
    """The failures a trial is expected to meet (divergence, out of memory, a bad sampled config or data): they
    fail the trial with a one-line reason; any other exception fails it too, with its traceback kept."""
    import torch

    from elalora_auto.trial import NonFiniteLossError

    return NonFiniteLossError, torch.OutOfMemoryError, UserError


def sampler_seed(seed: int, n_trials: int, salt: int) -> int:
    """A sampler seed from the study's seed, its size and a salt (0 for the process that created the study, else
    its pid).

    A fixed seed would replay the same random draws on every start: a resumed study re-proposed the
    configurations it had already run, and parallel workers proposed each other's. The creating `search` salts
    with 0, so the same study file and seed on a fresh study propose the same configurations again (a search
    can be reproduced, and two studies that differ in one setting start from the same draws).
    """
    import numpy as np

    return int(np.random.SeedSequence([seed % 2**32, n_trials, salt]).generate_state(1)[0])


def make_sampler(name: str, seed: int, startup_trials: int) -> optuna.samplers.BaseSampler:
    """The study's sampler (`SearchSettings.sampler`). Constraints reach either through `trial.set_constraint`
    (the `--max-params` cap; a pruned Pareto trial's `pruning.PRUNED`), which both read from the trials: Optuna 5
    deprecated `constraints_func`. GPSampler models complete trials only, so pruned ones and their constraint
    never enter it; running trials (other workers') enter its batch acquisition through their shared params."""
    if name == "gp":
        return optuna.samplers.GPSampler(seed=seed, n_startup_trials=startup_trials)
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=startup_trials, multivariate=True,
                                      constant_liar=True)


def gp_start_note(study: optuna.Study, startup_trials: int) -> tuple[bool, str | None]:
    """(whether GP's start-up is settled, the note to print): GPSampler counts complete trials only towards its
    start-up, so under pruning a `--sampler gp` search can end without GP ever proposing, silently a random search
    (bench measured one: 4-8 of 24 trials complete under the halving rungs). Said once, when it first shows."""
    states = [t.state for t in study.get_trials(deepcopy=False)]
    complete = states.count(optuna.trial.TrialState.COMPLETE)
    ended = complete + states.count(optuna.trial.TrialState.PRUNED)
    if complete >= startup_trials:
        return True, None
    if ended < startup_trials:
        return False, None
    return True, (f"note: the GP sampler still draws at random: {ended} trials ended, {complete} complete, and "
                  f"GPSampler counts complete trials only towards its {startup_trials} start-up trials (pruning "
                  f"stopped the rest); to let it model, set startup_trials: {max(complete, 1)} in the study file "
                  "and run the search again, or use --sampler tpe, which counts pruned trials too")


def _has_waiting(study: optuna.Study) -> bool:
    return bool(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.WAITING,)))


def _keep_traceback(folder: Path, exc: BaseException) -> Path:
    """The traceback of a trial's unexpected exception, written to its folder (the trial's line names it)."""
    import traceback

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "traceback.txt"
    path.write_text("".join(traceback.format_exception(exc)))
    return path


class Interrupted(KeyboardInterrupt):
    """Ctrl-C stopped the loop; `trials` are the numbers of the trials it stopped (each re-queued as it was)."""

    def __init__(self, trials: Iterable[int | None]) -> None:
        self.trials = sorted(t for t in trials if t is not None)
        super().__init__(self.trials)


def interrupted_line(trials: Sequence[int], argv: Sequence[str]) -> str:
    """One line for Ctrl-C: which trials the next run re-runs, and the command that resumes (URLs redacted)."""
    import shlex

    def hidden(arg: str) -> str:
        flag, sep, value = arg.partition("=") if arg.startswith("--") and "=" in arg else ("", "", arg)
        return flag + sep + (redact(value) if "://" in value else value)

    shown = list(map(hidden, argv))
    command = shlex.join(["elalora-auto", *shown])
    if shown != list(argv):
        command += " (password hidden: give it back, or set ELALORA_STORAGE)"
    if not trials:
        return f"interrupted; resume with: {command}"
    names = ", ".join(map(str, trials))
    return f"interrupted: trial{'s' if len(trials) > 1 else ''} {names} will be re-run; resume with: {command}"


class _TrialFailureLines(logging.Filter):
    """Drops Optuna's "Trial N failed ..." warnings (with their tracebacks): `finished` prints one line per
    failed trial with its reason, and a Ctrl-C'd trial is named by the interrupted line."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not (message.startswith("Trial ") and " failed with " in message)


def _quiet_trial_failures() -> None:
    logger = logging.getLogger("optuna.study._optimize")  # Optuna's logger of trial outcomes
    if not any(isinstance(f, _TrialFailureLines) for f in logger.filters):
        logger.addFilter(_TrialFailureLines())


def _exit_now(signum: int, frame: Any) -> None:
    print("interrupted again: exiting now", file=sys.stderr, flush=True)
    os._exit(130)


def _exit_on_second_interrupt() -> Any:
    """After the first Ctrl-C the loop cleans up (events, the re-queue); a second one exits at once.

    Returns the SIGINT handler it replaced (None off the main thread, where signals cannot be set), for the
    caller to put back once the cleanup is done.
    """
    if threading.current_thread() is not threading.main_thread():
        return None
    previous = signal.signal(signal.SIGINT, _exit_now)
    return None if previous is _exit_now else previous


class Worker:
    """Runs trials until the study holds its budget of them (or the timeout passes).

    `storage` is the backend the study was opened with (orphan recovery uses its public methods). The sampler's
    seed is `sampler_seed(settings.sampler_seed, else settings.seed, trials already in the study, salt)`, the
    salt being the pid unless given (the `search` that created the study gives 0): a resumed study and parallel
    workers each draw fresh configurations, not the ones the same seed drew before.
    """

    def __init__(self, plan: StudyPlan, study: optuna.Study, storage: Any, storage_label: str, gate: TrialGate,
                 listeners: Iterable[Listener] = (), progress: bool = False,
                 echo: Callable[[str], None] = print, salt: int | None = None) -> None:
        self.plan, self.study, self.storage, self.storage_label = plan, study, storage, storage_label
        self.gate = gate  # `trial_gate` of the study, as this process opened it
        self.listeners, self.progress, self.echo = list(listeners), progress, echo
        settings = plan.settings
        self.rule = PruningRule(settings.pruning, plan.multi, plan.baseline, plan.baseline_margin, storage,
                                plan.rungs)
        study.pruner = self.rule.pruner()
        seed = sampler_seed(settings.seed if settings.sampler_seed is None else settings.sampler_seed,
                            len(study.get_trials(deepcopy=False)), os.getpid() if salt is None else salt)
        study.sampler = make_sampler(settings.sampler, seed, settings.startup_trials)
        self.gp_unsettled = settings.sampler == "gp"  # until `gp_start_note` has had its say
        self.budget = int(study.user_attrs.get("settings", {}).get("trials", settings.trials))
        self.trials_dir = Workdir(settings.workdir).trials(study.study_name)
        self.failures = _failure_types()
        self.worker_id = f"{socket.gethostname()}:{os.getpid()}"
        # this process's ended trials (TrialResult, folder) from their `trial_end`, until `finished` reports them
        self.results: dict[int, tuple[TrialResult, str | None]] = {}
        self.user_errors: list[str] = []  # consecutive trials failed by bad input
        # Any other exception fails its trial too (one library error must not end a 50-trial study), with its
        # traceback kept in the trial's folder; `crashes` are the consecutive ones (reason, traceback file).
        self.crashed: dict[int, tuple[str, Path]] = {}
        self.crashes: list[tuple[str, Path]] = []
        self.running: int | None = None  # the trial this process runs now (named when Ctrl-C stops it)
        self.previous_sigint: Any = None  # the SIGINT handler to restore after a Ctrl-C's cleanup
        # Ctrl-C is held back outside the objective's own body: while Optuna creates a trial (until the trial
        # records its worker) and while it tells the outcome and runs `finished`. A SIGINT inside Optuna's tell
        # ended the process with "AssertionError: Should not reach." and a traceback (bench/chaos.py).
        self.hold = SigintHold()

    def run(self) -> None:
        """The loop; Ctrl-C ends it with `Interrupted(trial number)` once the study's end is emitted."""
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        _quiet_trial_failures()  # one line per trial comes from `finished` instead
        study, settings = self.study, self.plan.settings
        recover_orphans(study, self.storage)
        emit(self.listeners, Event("study_start", 0, {"study": study, "study_name": study.study_name,
                                                      "storage": self.storage_label, "backend": self.storage,
                                                      "settings": redacted_settings(settings.to_dict())}))
        deadline = None if settings.timeout is None else time.monotonic() + settings.timeout
        try:
            while deadline is None or time.monotonic() < deadline:
                self.gate.acquire()  # released once the trial exists (`objective`), so the budget is never overshot
                try:
                    if not (_has_waiting(study) or counted_trials(study) < self.budget):
                        break
                    self.running = None
                    self.hold.start()  # until the trial is ours: a Ctrl-C inside `ask` would leave it RUNNING
                    try:
                        study.optimize(self.objective, n_trials=1, catch=(Exception,), callbacks=[self.finished])
                    finally:
                        self.hold.release()
                finally:
                    self.gate.release()
                if len(self.crashes) >= MAX_CONSECUTIVE_CRASHES:
                    reason, path = self.crashes[-1]
                    raise UserError(f"{len(self.crashes)} trials in a row failed with: {reason} (traceback: {path}); "
                                    "fix the cause or exclude that configuration from the space, then run the same "
                                    "command again")
                if len(self.user_errors) >= MAX_CONSECUTIVE_USER_ERRORS:
                    raise UserError(f"{len(self.user_errors)} trials in a row failed with: {self.user_errors[-1]}; "
                                    "fix it and run the same command again (these trials leave the budget alone)")
        except KeyboardInterrupt:
            self.previous_sigint = self.previous_sigint or _exit_on_second_interrupt()
            raise Interrupted([self.running]) from None
        finally:
            emit(self.listeners, Event("study_end", 0, {"study": study, "study_name": study.study_name}))
            if self.previous_sigint is not None:  # a library caller gets its own Ctrl-C handling back
                signal.signal(signal.SIGINT, self.previous_sigint)

    def objective(self, trial: optuna.Trial) -> Any:
        from elalora_auto.trial import run_trial

        self.running = trial.number
        trial.set_user_attr("worker", self.worker_id)
        inherited = trial.user_attrs  # a re-run of a dead trial starts with that trial's attributes
        for key, empty in ((FAIL_REASON, None), (RUNG_SIZES, {})):
            if inherited.get(key):
                trial.set_user_attr(key, empty)
        out = self.trials_dir / str(trial.number)
        try:
            self.gate.release()
            self.hold.release()  # the trial is ours now: a Ctrl-C from here on re-queues it
            spec, broken = self.plan.drawn_spec(trial)
            if broken is not None:
                self._skip(trial, spec, broken, out)
            result = run_trial(spec, reporter=lambda step, value, size: self.rule.check(trial, step, value, size),
                               listeners=self._trial_listeners(trial), output_dir=out, progress=self.progress)
        except optuna.TrialPruned:
            self.hold.start()
            raise
        except Exception as exc:
            reason = f"{type(exc).__name__}: {exc}".splitlines()[0]
            trial.set_user_attr(FAIL_REASON, reason)
            if not isinstance(exc, self.failures):
                self.crashed[trial.number] = (reason, _keep_traceback(out, exc))
            self.hold.start()
            raise
        except KeyboardInterrupt:
            self.previous_sigint = _exit_on_second_interrupt()
            trial.set_user_attr(FAIL_REASON, INTERRUPTED)
            rerun = {k: v for k, v in trial.user_attrs.items() if k == ORIGIN}
            self.study.enqueue_trial(trial.params, user_attrs={**rerun, "rerun_of": trial.number})
            raise
        self.hold.start()  # the result is written and told in one piece
        for key, value in summary_attrs(result, out).items():
            trial.set_user_attr(key, value)
        if self.plan.multi:
            return result.primary, result.trainable_params
        if self.plan.settings.max_params is not None:
            trial.set_constraint("max_params", result.trainable_params - self.plan.settings.max_params)
        return result.primary

    def _skip(self, trial: optuna.Trial, spec: Any, reason: str, out: Path) -> NoReturn:
        """A configuration the space's constraints rule out: pruned before it trains, its folder (config.yaml,
        result.json with the reason) and `trial_end` written like any other ending's."""
        from elalora_auto.trial_output import finish_trial

        trial.set_user_attr(PRUNE_REASON, reason)
        finish_trial(spec, TrialResult.unreached(Ending.PRUNED, reason), None, out,
                     self._trial_listeners(trial))
        raise optuna.TrialPruned(reason)

    def _trial_listeners(self, trial: optuna.Trial) -> list[Listener]:
        """The study's listeners with the trial's number and study, and the worker's own keeper of the ending."""
        return with_context([*self.listeners, self._keep_ending], trial_number=trial.number,
                            study_name=self.study.study_name)

    def _keep_ending(self, event: Event) -> None:
        """Each ending's TrialResult, complete, pruned or failed, from `trial_end`: `finished` hands it on."""
        if event.kind == "trial_end":
            self.results[event.data["trial_number"]] = (event.data["result"], event.data["output_dir"])

    def finished(self, study: optuna.Study, frozen: optuna.trial.FrozenTrial) -> None:
        """Optuna's callback after each trial: the `trial_finished` event, one line, the user-error count. Here
        Optuna's state (a finished one: COMPLETE, PRUNED or FAIL) becomes the trial's `Ending`, the one place the
        two meet: Optuna was told it by the objective's return or exception."""
        self.running = None
        state = Ending[frozen.state.name]
        reason = summary_of_trial(frozen).reason
        result, output_dir = self.results.pop(frozen.number, (None, None))
        crash = self.crashed.pop(frozen.number, None)
        emit(self.listeners, Event("trial_finished", frozen.number, {
            "study": study, "study_name": study.study_name, "trial_number": frozen.number,
            "state": state, "reason": reason, "params": dict(frozen.params),
            "values": list(frozen.values) if frozen.values is not None else None, "result": result,
            "output_dir": output_dir, "origin": frozen.user_attrs.get(ORIGIN)}))
        if result is not None and state is Ending.COMPLETE:
            self.echo(f"trial {frozen.number}: {self.plan.primary_metric} {result.primary:.4f}, "
                      f"{result.trainable_params:,} trainable parameters, {len(result.rank_history)} rank "
                      f"rounds, {result.wall_time_s:.1f} s")
        else:
            self.echo(f"trial {frozen.number}: {state.name.lower()} ({reason})"
                      + (f"; traceback: {crash[1]}" if crash else ""))
        if self.gp_unsettled:
            settled, note = gp_start_note(study, self.plan.settings.startup_trials)
            self.gp_unsettled = not settled
            if note:
                self.echo(note)
        fail_reason = frozen.user_attrs.get(FAIL_REASON)
        if state is Ending.FAIL and isinstance(fail_reason, str) and fail_reason.startswith(USER_ERRORS):
            self.user_errors.append(fail_reason)
        else:
            self.user_errors.clear()
        self.crashes = [*self.crashes, crash] if crash else []
