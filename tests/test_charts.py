"""The metrics chart of a model whose maps have no pointing game (faces) builds without a warning."""

from __future__ import annotations

import warnings

import charts


def test_metrics_chart_without_pointing_game_warns_nothing() -> None:
    views = {
        "last": {
            "pointing_15px": None,
            "pointing_8px": None,
            "pointing_4px": None,
            "pointing_0px": None,
            "pointing_counted": 0,
            "images": 10,
            "deletion_auc": 0.4,
            "insertion_auc": 0.6,
            "average_drop": 3.0,
            "increase_in_confidence": 50.0,
        }
    }
    result = {
        "methods": {"cam": views},
        "classification": {"accuracy": 0.8, "images": 10},
        "explained_class": "true class",
    }
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fig = charts.metrics_chart(result, "a face model")
    texts = [text.get_text() for ax in fig.axes for text in ax.texts]
    assert "not measured for this model" in texts
