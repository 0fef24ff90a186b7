"""The Python API in one place: load a model, explain pictures, draw the result, evaluate on a data set.

    import wtl
    model = wtl.load_model("malaria-every")          # a bundled name, or a path to a checkpoint
    result = wtl.explain(model, "data/demo/Parasitized", method="cam", blocks="every")
    wtl.draw(result, "outputs/")                     # the same PNGs the CLI writes

The command-line tools call these same functions.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from torch import Tensor

# `X as X`: re-exported, the names wtl/__init__.py's __all__ lists (the one list of the API).
from wtl.checkpoints.loading import LoadedModel as LoadedModel
from wtl.checkpoints.loading import load_model as load_model
from wtl.data.datasets import dataset_kind, model_dataset
from wtl.evaluation.driver import EvaluateOptions as EvaluateOptions
from wtl.evaluation.driver import evaluate as evaluate_dataset
from wtl.evaluation.inputs import Images
from wtl.evaluation.result import EvaluationResult as EvaluationResult
from wtl.maps.explain import Picture
from wtl.maps.explain import Result as Result
from wtl.maps.explain import explain as explain_pictures
from wtl.maps.registry import DEFAULT_FUSION, DEFAULT_METHOD
from wtl.metrics.erasure import Erasure as Erasure
from wtl.metrics.erasure import erase as erase_pictures
from wtl.metrics.ood import assess
from wtl.plot.draw import draw as draw


def explain(
    model: LoadedModel,
    pictures: Picture | Sequence[Picture],
    method: str = DEFAULT_METHOD,
    blocks: str = "last",
    class_index: int | Tensor | None = None,
    fusion: str = DEFAULT_FUSION,
    batch_size: int = 32,
    layer: str | None = None,
) -> Result:
    """Explain pictures with a model (wtl.maps.explain.explain), each judged for being like the training data.

    Where the model has out-of-distribution statistics (its checkpoint's, or the bundled sidecar's),
    `result.out_of_distribution` (B,) says which pictures are unlike its training pictures and
    `result.ood_score` by how much; `draw` puts it in the title and the npz.
    """
    result = explain_pictures(model, pictures, method, blocks, class_index, fusion, batch_size, layer=layer)
    return assess(result)


def erase(
    model: LoadedModel,
    pictures: Picture | Sequence[Picture],
    region: str | Path,
    method: str = DEFAULT_METHOD,
    class_index: int | Tensor | None = None,
    batch_size: int = 32,
) -> Erasure:
    """Explain pictures as they are and with a region removed: 'background', 'stain', or a mask picture's path.

    Returns an Erasure: `.before` and `.after` (Results, judged for being like the training data),
    `.masks` (B, S, S) what was removed, `.changed` (B,) whether the prediction changed.
    `wtl.plot.erasure.draw_erasure` draws it as `single --erase` does.
    """
    erased = erase_pictures(model, pictures, region, method, class_index, batch_size)
    erased.before, erased.after = assess(erased.before), assess(erased.after)
    return erased


def evaluate(
    model: LoadedModel,
    data: str | Path | Images,
    methods: Sequence[str] = ("cam", "gradcam"),
    split: str = "test",
    options: EvaluateOptions | None = None,
    **changes: object,
) -> EvaluationResult:
    """Accuracy and map quality of `model` on a data set: a folder (its `split`, as the CLI reads it) or a Dataset.

    Args:
        model: a loaded checkpoint.
        data: a data-set folder (malaria, gender or class folders), or a map-style data set / iterable
            of (image, label) pairs.
        methods: map methods (wtl.maps.registry.METHODS).
        split: train, val, test or all (for a folder).
        options, changes: EvaluateOptions and overrides of its fields (e.g. progress=False).

    Returns:
        EvaluationResult (its to_json() is what `evaluate` writes).
    """
    dataset: Images
    if isinstance(data, (str, Path)):
        kind = dataset_kind(model.class_names, model.checkpoint.get("dataset"))
        dataset = model_dataset(Path(data), split, model.class_names, kind, model.image_size, model.preprocess)
    else:
        dataset = data
    return evaluate_dataset(model, dataset, methods, options, **changes)
