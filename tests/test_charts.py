"""The metrics chart of a model whose maps have no pointing game (faces) builds without a warning."""

from __future__ import annotations

import warnings

import torch

from wtl.evaluation.result import EvaluationResult, ViewScores
from wtl.metrics.classification import Classification
from wtl.plot import charts


def test_metrics_chart_without_pointing_game_warns_nothing() -> None:
    scores = ViewScores.empty(10)
    scores.explained[:] = True
    for key, value in {"deletion_auc": 0.4, "insertion_auc": 0.6, "average_drop": 3.0}.items():
        scores.faithfulness[key][:] = value
    scores.faithfulness["increase_in_confidence"][:5] = 100.0
    scores.faithfulness["increase_in_confidence"][5:] = 0.0
    truth = torch.tensor([0] * 5 + [1] * 5)
    result = EvaluationResult(
        classification=Classification.from_predictions(truth, truth.roll(1), ["Female", "Male"]),
        explained_class="true class",
        methods={"cam": {"last": scores}},
        fusion_rule="product",
        records=[],
        image_size=64,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fig = charts.metrics_chart(result, "a face model")
    texts = [text.get_text() for ax in fig.axes for text in ax.texts]
    assert "not measured for this model" in texts
