"""The report's figures: each writes its file, the knee and caveats show, ticks and lines stay readable, and a
report folder carries plotly.js once."""

from __future__ import annotations

import itertools
import random
from pathlib import Path

import optuna
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from optuna.trial import TrialState

from elalora_auto import plots
from elalora_auto.records import StudyRow

TYPES = ("attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense",
         "intermediate.dense", "output.dense")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def minilm_names(layers: int = 6) -> list[str]:
    """The 37 LoRA targets of a 6-layer BERT (MiniLM-sized): six per layer plus the pooler."""
    return [f"bert.encoder.layer.{layer}.{kind}" for layer in range(layers) for kind in TYPES] + ["bert.pooler.dense"]


def rank_history(names: list[str], rounds: int = 10, seed: int = 0) -> list[tuple[int, dict[str, int]]]:
    rng = random.Random(seed)
    ranks = dict.fromkeys(names, 8)
    history = [(0, dict(ranks))]
    for step in range(1, rounds + 1):
        ranks = {name: max(0, rank + rng.choice((-2, -1, 0, 1, 2))) for name, rank in ranks.items()}
        history.append((50 * step, ranks))
    return history


def row(number: int, metric: float, size: int, method: str = "elalora", on_front: bool = False,
        knee: bool = False, params: dict | None = None) -> StudyRow:
    """A complete trial's row as `results.study_rows` makes it."""
    return StudyRow(number=number, state=TrialState.COMPLETE, metric=metric, trainable_params=size, method=method,
                    params={} if params is None else params, on_front=on_front, knee=knee)


def front_rows(count: int, seed: int = 0) -> list[StudyRow]:
    """`count` trials from 18k to 600k parameters; the cheapest-to-best staircase is the front, its middle the knee."""
    rng = random.Random(seed)
    sizes = [18_000 * 2 ** (i % 6) for i in range(count)]
    on_front = min(count, 6)
    return [row(i, 0.8 + 0.01 * (i % 6) - 0.002 * (i // 6) + rng.uniform(0, 0.001), size, on_front=i < on_front,
                knee=i == on_front // 2, params={"r_init": 8, "learning_rate": 3e-4}) for i, size in enumerate(sizes)]


def texts(fig: Figure) -> list[str]:
    return [text.get_text() for text in fig.findobj(lambda artist: hasattr(artist, "get_text"))]


def small_study(complete: int) -> optuna.Study:
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=optuna.samplers.RandomSampler(seed=0))
    study.optimize(lambda t: (0.8 + 0.01 * t.suggest_int("r_init", 2, 16) + t.suggest_float("lr", 1e-5, 1e-3),
                              4608.0 * t.params["r_init"]), n_trials=complete)
    return study


def test_pareto_png_stars_the_knee_and_labels_ticks_without_overlap(tmp_path):
    rows = front_rows(16) + [row(0, 0.79, 590_000, "lora (peer)")]
    fig = plots.pareto_figure(rows, "accuracy", complete_trials=16)
    assert any(text == "knee: trial 3" for text in texts(fig))
    FigureCanvasAgg(fig).draw()
    ax = fig.axes[0]
    low, high = ax.get_xlim()
    labels = [label for label in ax.get_xticklabels() if label.get_text() and low <= label.get_position()[0] <= high]
    assert [label.get_text() for label in labels] == ["20k", "50k", "100k", "200k", "500k"]
    boxes = [label.get_window_extent() for label in labels]
    assert not any(a.overlaps(b) for a, b in itertools.combinations(boxes, 2))
    # A peer's rows take their method's colour, not the next colour of the cycle (ElaLoRA's blue).
    peer = next(c for c in ax.collections if c.get_label().startswith("lora (peer)"))
    assert tuple(peer.get_facecolor()[0][:3]) == pytest.approx((1.0, 0x7F / 255, 0x0E / 255))
    path = plots.pareto_png(rows, tmp_path / "front.png", "accuracy")
    assert path.read_bytes()[:8] == PNG_MAGIC


@pytest.mark.parametrize("complete, caveat", [(3, True), (plots.FEW_TRIALS, False)])
def test_pareto_caveat_below_five_complete_trials(tmp_path, complete, caveat):
    rows = front_rows(complete)
    expected = f"based on {complete} complete trials"
    assert any(expected in text for text in texts(plots.pareto_figure(rows, "accuracy"))) is caveat
    # Peers drawn beside the study do not count: the caller passes the study's own count.
    counted = plots.pareto_figure(rows + front_rows(8), "accuracy", complete_trials=complete)
    assert any(expected in text for text in texts(counted)) is caveat
    html = plots.pareto_html(rows, tmp_path / "front.html", "accuracy").read_text()
    assert (expected in html) is caveat
    assert "knee: trial" in html


def test_html_figures_share_one_plotly_bundle(tmp_path):
    study = small_study(6)
    written = [
        plots.pareto_html(front_rows(6), tmp_path / "pareto_front.html", "accuracy"),
        plots.optuna_history_html(study, tmp_path / "optuna_history.html", lambda t: t.values[0], "accuracy"),
        plots.optuna_importance_html(study, tmp_path / "optuna_importance.html", lambda t: -t.values[0], "accuracy"),
    ]
    for path in written:
        assert path is not None and path.stat().st_size < 200_000, path
        assert 'src="plotly.min.js"' in path.read_text()
    assert sorted(p.name for p in tmp_path.glob("*.js")) == ["plotly.min.js"]
    assert (tmp_path / "plotly.min.js").stat().st_size > 1_000_000
    # Where an HTML must stand alone (e.g. an artifact previewed on its own), plotly.js can still be inlined.
    alone = plots.pareto_html(front_rows(6), tmp_path / "alone" / "front.html", include_plotlyjs=True)
    assert alone.stat().st_size > 1_000_000 and not (alone.parent / "plotly.min.js").exists()


@pytest.mark.parametrize("complete, caveat", [(3, True), (plots.FEW_TRIALS, False)])
def test_importance_caveat_below_five_complete_trials(tmp_path, complete, caveat):
    path = plots.optuna_importance_html(small_study(complete), tmp_path / "imp.html", lambda t: -t.values[0], "acc")
    assert path is not None
    assert (f"based on {complete} complete trials" in path.read_text()) is caveat


def test_importance_needs_two_complete_trials(tmp_path):
    assert plots.optuna_importance_html(small_study(1), tmp_path / "imp.html", None, "acc") is None
    assert not (tmp_path / "imp.html").exists()


def test_rank_heatmap_annotates_37_matrices_and_names_the_trial(tmp_path):
    rank_map = rank_history(minilm_names())[-1][1]
    fig = plots.rank_heatmap_figure(rank_map, trial=7)
    ax = fig.axes[0]
    assert ax.get_title().startswith("trial 7: final rank per matrix\n37 matrices, total rank ")
    assert [label.get_text() for label in ax.get_xticklabels()] == [*TYPES, "bert.pooler.dense"]
    assert [label.get_text() for label in ax.get_yticklabels()] == ["0", "1", "2", "3", "4", "5", "other"]
    cells = sorted(int(text.get_text()) for text in ax.texts)
    assert cells == sorted(rank_map.values())
    path = plots.rank_heatmap(rank_map, tmp_path / "heat.png", trial=7)
    assert path.read_bytes()[:8] == PNG_MAGIC
    with pytest.raises(ValueError, match="at least one matrix"):
        plots.rank_heatmap({}, tmp_path / "empty.png")


def test_rank_evolution_colours_by_module_type_one_panel_each(tmp_path):
    names = minilm_names()
    fig = plots.rank_evolution_figure(rank_history(names), trial=2)
    panels = [ax for ax in fig.axes if ax.get_lines()]
    assert [ax.get_title() for ax in panels] == [f"{kind} (6)" for kind in TYPES] + ["bert.pooler.dense (1)"]
    colours = []
    for ax in panels:
        mine = {line.get_color() for line in ax.get_lines()}
        assert len(mine) == 1, ax.get_title()  # one colour per module type ...
        colours += mine
        alphas = [line.get_alpha() for line in ax.get_lines()]
        assert len(set(alphas)) == len(alphas)  # ... each layer its own shade
    assert len(set(colours)) == len(panels)  # ... and a different colour for each type
    assert sum(len(ax.get_lines()) for ax in panels) == len(names)
    assert "trial 2: rank of each matrix (37 matrices, 7 module types)" in texts(fig)
    assert "layer 5" in texts(fig)  # the layer shading is explained
    path = plots.rank_evolution(rank_history(names), tmp_path / "evo.png", trial=2)
    assert path.read_bytes()[:8] == PNG_MAGIC


def test_rank_evolution_of_names_outside_layers(tmp_path):
    history = rank_history(["classifier.dense", "pre_classifier"], rounds=3)
    fig = plots.rank_evolution_figure(history)
    assert [ax.get_title() for ax in fig.axes if ax.get_lines()] == ["classifier.dense (1)", "pre_classifier (1)"]
    assert Path(plots.rank_evolution(history, tmp_path / "evo.png")).stat().st_size > 0
