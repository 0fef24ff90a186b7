"""Every file-name rule of the project, for the writer and the reader alike (no torch here).

Checkpoints keep the original project's names, `model_<data>_<run>.pt`; beside each the trainer
writes `<name>.best.pt` (best-validation weights), `<name>.test_files.json` (its test split),
`<name>.metrics.json` and `<name>.history.png`; beside the best weights `<file>.scale.json`
(the model's shared colour scale); `<name>.ood.npz` holds a checkpoint's out-of-distribution
statistics where the checkpoint itself does not (the bundled ones). The commands name their
pictures after the input and the method, so that two inputs or two methods never overwrite each other.
"""

from __future__ import annotations

import re
from pathlib import Path

# The original project's runs: last block only, or every block with the loss on the last or on every block.
RUNS = {("last", "last"): "last", ("every", "last"): "every_single_loss", ("every", "every"): "every_multi_loss"}
# The original project's test-split manifests in data/, by run (written with --manifest-dir).
SEED_MANIFEST_SUFFIX = {"last": "last", "every_single_loss": "every", "every_multi_loss": "every_every"}
# Which checkpoint each view uses when no --model is given.
VIEW_MODELS = {
    "gender": "model_gender_last",
    "malaria": "model_malaria_last",
    "multi-last": "model_malaria_every_single_loss",
    "multi-every": "model_malaria_every_multi_loss",
}
# Short names of the bundled checkpoints for `wtl.load_model("malaria-every")`.
BUNDLED_ALIASES = {
    "malaria": "model_malaria_last",
    "malaria-last": "model_malaria_last",
    "malaria-every": "model_malaria_every_multi_loss",
    "malaria-every-single": "model_malaria_every_single_loss",
    "gender": "model_gender_last",
}


def data_name(dataset: str, data_dir: Path | None = None) -> str:
    """The data-set part of a checkpoint's name: gender, malaria, or a class folder's own name."""
    if dataset != "folder":
        return dataset
    folder = Path(data_dir).resolve().name if data_dir is not None else ""
    return re.sub(r"[^A-Za-z0-9]+", "_", folder).strip("_").lower() or "folder"


def run_name(network: str, loss: str = "last") -> str:
    """last, every_single_loss or every_multi_loss (the original project's runs); other networks by their name."""
    return RUNS.get((network, loss if network == "every" else "last"), network)


# A model trained on permuted labels (model_main.py --shuffle-labels) gets its own name, so that
# it never replaces the real model of the same recipe.
SHUFFLED_SUFFIX = "_shuffled_labels"


def shuffled_run_name(run: str) -> str:
    """The run name of the same recipe trained on shuffled labels: last -> last_shuffled_labels."""
    return run + SHUFFLED_SUFFIX


def checkpoint_file(models_dir: Path, data: str, run: str) -> Path:
    """models_dir/model_<data>_<run>.pt, e.g. model_malaria_every_multi_loss.pt."""
    return Path(models_dir) / f"model_{data}_{run}.pt"


def checkpoint_name(path: str | Path) -> str:
    """A checkpoint's model name: its file name without `.pt` and without the trainer's `.best`."""
    return Path(path).name.removesuffix(".pt").removesuffix(".best")


def _beside(checkpoint: Path, suffix: str) -> Path:
    return Path(checkpoint).with_name(checkpoint_name(checkpoint) + suffix)


def best_file(checkpoint: Path) -> Path:
    """<name>.best.pt: the best-validation weights, without optimizer state."""
    return _beside(checkpoint, ".best.pt")


def manifest_file(checkpoint: Path) -> Path:
    """<name>.test_files.json: the test split's file names, beside the checkpoint."""
    return _beside(checkpoint, ".test_files.json")


def metrics_file(checkpoint: Path) -> Path:
    """<name>.metrics.json: the test split's scores and the training history."""
    return _beside(checkpoint, ".metrics.json")


def scale_file(checkpoint: Path) -> Path:
    """<file>.scale.json: the model's shared colour scale, beside the very weights it was measured with.

    Keyed by the file, not the model name: `x.pt` (the last epoch) and `x.best.pt` (the best
    weights) are different weights, so `x.best.pt` has `x.best.scale.json`.
    """
    checkpoint = Path(checkpoint)
    return checkpoint.with_name(checkpoint.name.removesuffix(".pt") + ".scale.json")


def history_file(checkpoint: Path) -> Path:
    """<name>.history.png: loss and accuracy per epoch."""
    return _beside(checkpoint, ".history.png")


def ood_file(checkpoint: Path) -> Path:
    """<name>.ood.npz: the statistics that tell pictures unlike the training data, for a checkpoint that lacks them.

    Not `.pt`, so that no folder scan ever takes it for a model.
    """
    return _beside(checkpoint, ".ood.npz")


def seed_manifest_name(data: str, run: str) -> str:
    """The original project's manifest name in data/: <data>_testing_filenames_{last,every,every_every}.json."""
    return f"{data}_testing_filenames_{SEED_MANIFEST_SUFFIX.get(run, run)}.json"


def seed_manifest_of(name: str) -> str:
    """The original project's manifest name for a checkpoint name such as model_malaria_last."""
    match = re.fullmatch(r"model_(.+?)_(last|every_single_loss|every_multi_loss)", name)
    if match is None:
        return f"{name}_testing_filenames.json"
    return seed_manifest_name(match.group(1), match.group(2))


def method_suffix(method: str) -> str:
    """'' for CAM (the original names), else e.g. '_gradcampp' so that methods never overwrite each other."""
    return "" if method == "cam" else "_" + method.replace("+", "p")


def single_picture(stem: str, method: str) -> str:
    """The single view's picture of one input (its file's stem): <stem>_single[_method]."""
    return f"{stem}_single{method_suffix(method)}"


def multi_picture(stem: str, checkpoint: Path, method: str) -> str:
    """The every-block view's picture: <stem>_multi_<model>[_method]."""
    return f"{stem}_multi_{checkpoint_name(checkpoint)}{method_suffix(method)}"


def erase_picture(stem: str, region: str) -> str:
    """single --erase's picture of one input: <stem>_erase_<region> (a mask file by its stem)."""
    tag = "".join(c if c.isalnum() else "_" for c in Path(region).stem)
    return f"{stem}_erase_{tag}"


def evaluation_stem(checkpoint: Path, split: str) -> str:
    """evaluate's JSON, chart and report folder: evaluate_<model>_<split>."""
    return f"evaluate_{checkpoint_name(checkpoint)}_{split}"


def features_stem(checkpoint: Path) -> str:
    """The features view's pictures: features_<model>_..."""
    return f"features_{checkpoint_name(checkpoint)}"
