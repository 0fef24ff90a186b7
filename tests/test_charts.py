"""The metrics chart: every bar carries its 95 % interval; without a pointing game (faces) no empty panel."""

from __future__ import annotations

import warnings

import numpy as np
import torch
from matplotlib.container import BarContainer

from wtl.evaluation.result import EvaluationResult, ViewScores
from wtl.metrics.classification import Classification
from wtl.plot import charts


def _result(distance: np.ndarray | None = None, people: list[str] | None = None) -> EvaluationResult:
    """Ten images, one CAM view: deletion/insertion on all, distances to the ground truth where given."""
    rng = np.random.default_rng(0)
    scores = ViewScores.empty(10)
    scores.explained[:] = True
    scores.faithfulness["deletion_auc"][:] = rng.uniform(0.2, 0.6, 10)
    scores.faithfulness["insertion_auc"][:] = rng.uniform(0.5, 0.9, 10)
    scores.faithfulness["average_drop"][:] = 3.0
    scores.faithfulness["increase_in_confidence"][:] = 0.0
    if distance is not None:
        scores.distance[:] = distance
    truth = torch.tensor([0] * 5 + [1] * 5)
    return EvaluationResult(
        classification=Classification.from_predictions(truth, truth.roll(1), ["Female", "Male"]),
        explained_class="true class",
        methods={"cam": {"last": scores}},
        fusion_rule="product",
        records=[],
        image_size=64,
        units=people or [f"image:{i}" for i in range(10)],
        unit="person" if people else "image",
    )


def _bars(fig) -> dict[str, BarContainer]:
    return {c.get_label(): c for ax in fig.axes for c in ax.containers if isinstance(c, BarContainer)}


def test_without_a_pointing_game_the_chart_has_one_panel_and_says_why() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fig = charts.metrics_chart(_result(people=[f"p{i // 2}" for i in range(10)]), "a face model")
    assert len(fig.axes) == 1
    assert set(_bars(fig)) == {"deletion AUC (lower is better)", "insertion AUC"}
    note = fig.get_supxlabel()
    assert "over 5 people" in note and "no pointing game" in note


def test_every_bar_has_a_whisker_spanning_its_bootstrap_interval() -> None:
    result = _result(distance=np.array([0.0, 3.0, 6.0, 10.0, 20.0, 0.0, 1.0, 9.0, 30.0, 5.0]))
    fig = charts.metrics_chart(result)
    assert len(fig.axes) == 2
    bars = _bars(fig)
    for label, key in [("pointing game 8 px", "pointing_8px"), ("insertion AUC", "insertion_auc")]:
        container = bars[label]
        low, high = result.ci("cam", "last", key)
        segments = container.errorbar.lines[2][0].get_segments()  # the vertical whisker of each bar
        (_, bottom), (_, top) = segments[0]
        assert (bottom, top) == (low, high) and low < container.datavalues[0] < high
    assert "over 10 images" in fig.get_supxlabel()
