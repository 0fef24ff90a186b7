"""Training end to end through model_main.py (real subprocesses), resuming, and the trainer itself."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import cell_image, error_lines, face_image, git_status, run_cli, throwaway_clone
from torch.utils.data import DataLoader, TensorDataset

import model_main
from model_data import training_splits
from model_network import Network, NetworkMultiLoss
from model_trainer import CheckpointTrainer, Trainer
from wtl.checkpoints import loading
from wtl.checkpoints.io import save_checkpoint
from wtl.data import augment
from wtl.errors import CheckpointError
from wtl.metrics import ood
from wtl.metrics.classification import Classification
from wtl.training import run

# Tiny runs: 32-pixel images, at most 12 training images per class (3 steps of 8), one epoch, CPU.
QUICK = ["--image-size", "32", "--batch-size", "8", "--workers", "0", "--max-per-class", "12", "--device", "cpu"]
STEPS_PER_EPOCH = 3  # 2 classes x 12 images / batch of 8
CHECKPOINT_KEYS = {"net_state_dict", "optim_state_dict", "scheduler_state_dict", "best_val_acc", "epoch", "class_names"}

RUNS = {
    # name: (data fixture, flags, checkpoint stem, manifest name, class names)
    "gender_last": (
        "gender_root",
        ["--dataset", "gender", "--network", "last"],
        "model_gender_last",
        "gender_testing_filenames_last.json",
        ["Female", "Male"],
    ),
    "malaria_last": (
        "malaria_root",
        ["--dataset", "malaria", "--network", "last"],
        "model_malaria_last",
        "malaria_testing_filenames_last.json",
        ["Uninfected", "Parasitized"],
    ),
    "malaria_every_single": (
        "malaria_root",
        ["--dataset", "malaria", "--network", "every", "--loss", "last"],
        "model_malaria_every_single_loss",
        "malaria_testing_filenames_every.json",
        ["Uninfected", "Parasitized"],
    ),
    "malaria_every_multi": (
        "malaria_root",
        ["--dataset", "malaria", "--network", "every", "--loss", "every"],
        "model_malaria_every_multi_loss",
        "malaria_testing_filenames_every_every.json",
        ["Uninfected", "Parasitized"],
    ),
    "folder_last": (
        "folder_root",
        ["--dataset", "folder", "--network", "last"],
        "model_shapes3_last",
        "shapes3_testing_filenames_last.json",
        ["circles", "squares", "stripes"],
    ),
}


def no_traceback(stderr: str) -> None:
    assert "Traceback" not in stderr, stderr


def one_error(stderr: str) -> str:
    """The single `error: ...` line of a failed run (and no traceback)."""
    no_traceback(stderr)
    lines = error_lines(stderr)
    assert len(lines) == 1, stderr
    return lines[0]


def part_files(folder: Path) -> list[str]:
    return [name for name in os.listdir(folder) if name.endswith(".part")]


def adam_steps(checkpoint: dict) -> set[float]:
    return {float(state["step"]) for state in checkpoint["optim_state_dict"]["state"].values()}


class Run:
    """CLI training runs of one configuration into one models folder."""

    def __init__(self, root: Path, data_dir: Path, flags: list[str]) -> None:
        self.models = root / "models"
        self.manifests = root / "manifests"
        self.data_dir = data_dir
        self.flags = flags
        self.result: subprocess.CompletedProcess[str] | None = None

    def again(self, epochs: int) -> subprocess.CompletedProcess[str]:
        self.result = run_cli(
            *self.flags,
            *["--data-dir", self.data_dir, "--epochs", str(epochs), *QUICK],
            *["--models-dir", self.models],
        )
        return self.result

    def training_images(self) -> int:
        """How many training images the last run reported."""
        match = re.search(r": (\d+) training, ", self.result.stderr)
        assert match, self.result.stderr
        return int(match.group(1))


@pytest.fixture(scope="module")
def trained(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    """Train each configuration of RUNS at most once per module; returns name -> Run."""
    done: dict[str, Run] = {}

    def get(name: str) -> Run:
        if name not in done:
            data_fixture, flags, *_ = RUNS[name]
            data_dir = request.getfixturevalue(data_fixture)
            done[name] = Run(tmp_path_factory.mktemp(name), data_dir, flags)
            done[name].again(epochs=1)
        return done[name]

    return get


# --------------------------------------------------------------------------- the four kinds and a folder


@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.parametrize("name", list(RUNS))
def test_train_one_epoch(trained, name: str) -> None:
    _, _, stem, _, class_names = RUNS[name]
    run = trained(name)
    assert run.result.returncode == 0, run.result.stderr
    no_traceback(run.result.stderr)

    checkpoint_path = run.models / f"{stem}.pt"
    checkpoint = torch.load(checkpoint_path, weights_only=True)
    assert set(checkpoint) >= CHECKPOINT_KEYS
    assert checkpoint["epoch"] == 1
    assert checkpoint["class_names"] == class_names
    assert checkpoint["image_size"] == 32
    assert 0.0 <= checkpoint["best_val_acc"] <= 100.0
    # One Adam step per batch of the (at most 12 per class) training images.
    assert run.training_images() <= 12 * len(class_names)
    assert adam_steps(checkpoint) == {math.ceil(run.training_images() / 8)}

    best = torch.load(run.models / f"{stem}.best.pt", weights_only=True)
    assert best["epoch"] == 1 and "optim_state_dict" not in best

    metrics = json.loads((run.models / f"{stem}.metrics.json").read_text())
    assert 0.0 <= metrics["accuracy"] <= 1.0
    matrix = metrics["confusion_matrix"]
    assert len(matrix) == len(class_names) and all(len(row) == len(class_names) for row in matrix)
    assert sum(map(sum, matrix)) == metrics["images"] > 0
    assert set(metrics["per_class"]) == set(class_names)
    assert [row["epoch"] for row in metrics["history"]] == [1]

    # The test split's manifest sits beside the checkpoint (never in the repository's data/).
    assert not run.manifests.exists()
    manifest = json.loads((run.models / f"{stem}.test_files.json").read_text())
    if name.startswith("malaria"):
        assert set(manifest) == {"InfectedFilenames", "UninfectedFilenames"}
    else:
        assert set(manifest) == {f"{c}Filenames" for c in class_names}
    assert sum(map(len, manifest.values())) == metrics["images"]

    loaded = loading.load_model(checkpoint_path)
    assert loaded.kind == ("every" if "every" in name else "last")
    assert loaded.class_names == class_names
    assert loaded.image_size == 32
    with torch.no_grad():
        assert loaded.network(torch.rand(1, 3, 32, 32)).shape == (1, len(class_names))

    # Written atomically: no temporary file is left behind.
    assert part_files(run.models) == []
    assert sorted(p.name for p in run.models.iterdir()) == sorted(
        [
            f"{stem}.pt",
            f"{stem}.best.pt",
            f"{stem}.metrics.json",
            f"{stem}.test_files.json",
            f"{stem}.history.png",
            f"{stem}.best.scale.json",
        ]
    )
    # Both checkpoints carry the statistics that tell pictures unlike the training pictures.
    assert "ood" in checkpoint and "ood" in best and metrics["ood"]["quantile"] == ood.QUANTILE
    # The shared colour scale, measured on the test split with the best weights, is found by the loader.
    best_model = loading.load_model(run.models / f"{stem}.best.pt")
    assert best_model.scale is not None and best_model.scale.images == metrics["images"]
    views = ["last"] + ([f"block{b}" for b in range(1, 5)] if "every" in name else [])
    assert all(best_model.scale.of("cam", view) for view in views)
    # Grad-CAM is measured too (a barely trained network's Grad-CAM may be blank everywhere: a scale of 0,
    # which draws per image).
    assert "last" in best_model.scale.values["gradcam"] and "log-odds" in best_model.scale.units["cam"]
    assert checkpoint["preprocess"] == ("center-crop" if name.startswith("gender") else "squash")
    assert loaded.preprocess == checkpoint["preprocess"]


# --------------------------------------------------------------------------- resuming


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_resume_continues_and_stops(trained, tmp_path: Path) -> None:
    first = trained("malaria_last")
    assert first.result.returncode == 0, first.result.stderr
    run = Run(tmp_path, first.data_dir, first.flags)
    shutil.copytree(first.models, run.models)
    path = run.models / "model_malaria_last.pt"
    after_one = torch.load(path, weights_only=True)
    assert adam_steps(after_one) == {STEPS_PER_EPOCH}

    second = run.again(epochs=2)
    assert second.returncode == 0, second.stderr
    assert "resuming" in second.stderr and "after epoch 1 of 2" in second.stderr
    assert "epoch 2/2" in second.stderr and "epoch 1/2:" not in second.stderr
    after_two = torch.load(path, weights_only=True)
    assert after_two["epoch"] == 2
    # The optimizer continued (Adam's step count doubled) instead of starting afresh...
    assert adam_steps(after_two) == {2 * STEPS_PER_EPOCH}
    # ...and so did the learning-rate schedule: two decays by gamma from the base rate, not one.
    schedule = after_two["scheduler_state_dict"]
    assert schedule["last_epoch"] == 2
    lr = after_two["optim_state_dict"]["param_groups"][0]["lr"]
    assert lr == pytest.approx(schedule["base_lrs"][0] * schedule["gamma"] ** 2)
    assert schedule["gamma"] < 1
    assert not all(torch.equal(after_one["net_state_dict"][k], v) for k, v in after_two["net_state_dict"].items())
    metrics = json.loads((run.models / "model_malaria_last.metrics.json").read_text())
    # The metrics keep the first run's epoch too: the history travels in the checkpoint.
    assert [row["epoch"] for row in metrics["history"]] == [1, 2]
    assert "history" not in torch.load(run.models / "model_malaria_last.best.pt", weights_only=True)

    before = path.read_bytes()
    third = run.again(epochs=2)
    assert third.returncode == 0, third.stderr
    assert "trained for all 2 of 2 epochs: nothing to train" in third.stderr
    assert "resuming" not in third.stderr and "train loss" not in third.stderr
    assert path.read_bytes() == before  # nothing trained, nothing rewritten
    assert torch.load(path, weights_only=True)["epoch"] == 2
    assert part_files(run.models) == []


def _tiny_loaders(seed: int = 0) -> tuple[DataLoader, DataLoader]:
    generator = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (24, 3, 16, 16), generator=generator, dtype=torch.uint8)
    labels = torch.randint(0, 2, (24,), generator=generator)
    train = DataLoader(TensorDataset(images[:16], labels[:16]), batch_size=4, shuffle=True)
    val = DataLoader(TensorDataset(images[16:], labels[16:]), batch_size=8)
    return train, val


def _checkpoint_trainer(network, path: Path, epochs: int, **options) -> CheckpointTrainer:
    options = {"seed": 3, "lr": 1e-3, "gamma": 0.8, "augment": True, "show_progress": False, **options}
    return CheckpointTrainer(network, torch.nn.CrossEntropyLoss(), path, epochs, **options)


@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.parametrize("kind", ["last", "every"])
def test_resumed_run_equals_uninterrupted_run(tmp_path: Path, kind: str) -> None:
    """CheckpointTrainer reseeds every epoch: stopping after epoch 1 and resuming changes nothing."""
    build = Network if kind == "last" else NetworkMultiLoss
    every = kind == "every"
    train, val = _tiny_loaders()

    torch.manual_seed(0)
    straight = _checkpoint_trainer(build(), tmp_path / "straight.pt", 2, every_layer_loss=every)
    straight.train(train, val)

    torch.manual_seed(0)
    _checkpoint_trainer(build(), tmp_path / "stopped.pt", 1, every_layer_loss=every).train(train, val)
    torch.manual_seed(12345)  # a resumed process starts from other random state, and other initial weights
    resumed = _checkpoint_trainer(build(), tmp_path / "stopped.pt", 2, every_layer_loss=every)
    assert resumed.ep == 1
    history = resumed.train(train, val)
    assert [row["epoch"] for row in history] == [2]

    for key, value in straight.network.state_dict().items():
        torch.testing.assert_close(resumed.network.state_dict()[key], value, atol=1e-5, rtol=0, msg=key)
    first = torch.load(tmp_path / "straight.pt", weights_only=True)
    second = torch.load(tmp_path / "stopped.pt", weights_only=True)
    assert first["epoch"] == second["epoch"] == 2
    assert adam_steps(first) == adam_steps(second) == {8.0}


def test_resume_refuses_other_network(tmp_path: Path) -> None:
    """A published-style checkpoint (no metadata) of the other network kind cannot be resumed."""
    path = tmp_path / "model.pt"
    donor = Trainer(Network(), torch.nn.CrossEntropyLoss(), show_progress=False)
    state = {
        "net_state_dict": donor.network.state_dict(),
        "optim_state_dict": donor.optim.state_dict(),
        "scheduler_state_dict": donor.scheduler.state_dict(),
        "best_val_acc": 50.0,
        "epoch": 1,
    }
    save_checkpoint(state, path)
    with pytest.raises(CheckpointError, match="does not match this network") as caught:
        _checkpoint_trainer(NetworkMultiLoss(), path, 2)
    assert "\n" not in str(caught.value)
    # The same network resumes fine.
    assert _checkpoint_trainer(Network(), path, 2).ep == 1


def test_resume_refuses_other_metadata_and_bare_weights(tmp_path: Path) -> None:
    path = tmp_path / "model.pt"
    network = Network()
    save_checkpoint({"net_state_dict": network.state_dict()}, path)
    with pytest.raises(CheckpointError, match="lacks"):
        _checkpoint_trainer(Network(), path, 2)
    donor = Trainer(Network(), torch.nn.CrossEntropyLoss(), show_progress=False)
    save_checkpoint(
        {
            "net_state_dict": donor.network.state_dict(),
            "optim_state_dict": donor.optim.state_dict(),
            "scheduler_state_dict": donor.scheduler.state_dict(),
            "epoch": 1,
            "image_size": 64,
        },
        path,
    )
    with pytest.raises(CheckpointError, match="image_size"):
        _checkpoint_trainer(Network(), path, 2, metadata={"image_size": 32})


def test_save_checkpoint_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "model.pt"
    save_checkpoint({"epoch": 1}, path)
    before = path.read_bytes()

    def broken_save(content, stream) -> None:
        stream.write(b"half a file")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint({"epoch": 2}, path)
    assert path.read_bytes() == before
    assert part_files(tmp_path) == []


# --------------------------------------------------------------------------- trainer pieces


def _symmetries(image: torch.Tensor) -> list[torch.Tensor]:
    """The 8 symmetries of a square image (C, H, W): 4 turns, each also mirrored."""
    turns = [torch.rot90(image, k, dims=(-2, -1)) for k in range(4)]
    return turns + [turn.flip(-1) for turn in turns]


def test_dihedral_augment_applies_square_symmetries() -> None:
    images = torch.arange(3 * 2 * 4 * 4, dtype=torch.float32).reshape(3, 2, 4, 4)
    seen = set()
    for seed in range(30):
        out = augment.dihedral(images, torch.Generator().manual_seed(seed))
        assert out.shape == images.shape
        for i in range(len(images)):
            # The whole image (every channel alike) is one of its 8 symmetries.
            matches = [k for k, s in enumerate(_symmetries(images[i])) if torch.equal(out[i], s)]
            assert len(matches) == 1
            seen.add(matches[0])
    assert seen == set(range(8))  # and every one of them occurs


def test_trainer_learns_a_trivial_task() -> None:
    torch.manual_seed(0)
    bright = torch.full((8, 3, 16, 16), 0.9)
    dark = torch.full((8, 3, 16, 16), 0.1)
    images = torch.cat([bright, dark]) + 0.05 * torch.rand(16, 3, 16, 16)
    labels = torch.tensor([1] * 8 + [0] * 8)
    loader = DataLoader(TensorDataset(images, labels), batch_size=8, shuffle=True)
    trainer = Trainer(Network(), torch.nn.CrossEntropyLoss(), lr=3e-3, show_progress=False)
    losses = [trainer.epoch(loader, True)[0] for _ in range(6)]
    assert losses[-1] < losses[0]
    truth, predicted = trainer.predict(loader)
    assert sorted(truth.tolist()) == sorted(labels.tolist())
    assert (truth == predicted).float().mean() >= 0.9


def test_epoch_on_empty_loader_raises() -> None:
    trainer = Trainer(Network(), torch.nn.CrossEntropyLoss(), show_progress=False)
    with pytest.raises(ValueError, match="no images"):
        trainer.epoch([], training=False)


def test_classification_report() -> None:
    truth = torch.tensor([0, 0, 1, 1, 2, 2])
    predicted = torch.tensor([0, 1, 1, 1, 2, 0])
    scores = Classification.from_predictions(truth, predicted, ["a", "b", "c"])
    report = scores.to_json()
    assert report["accuracy"] == pytest.approx(4 / 6)
    assert report["confusion_matrix"] == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    assert report["per_class"]["b"] == pytest.approx({"precision": 2 / 3, "recall": 1.0, "f1": 0.8, "support": 2})
    assert report["per_class"]["c"]["precision"] == 1.0 and report["per_class"]["c"]["recall"] == 0.5
    text = scores.format()
    assert "66.67% on 6 images" in text and "0.800" in text
    # The Keras document's report: rows in % of their true class, macro and support-weighted averages.
    assert all(sum(row) == pytest.approx(100.0) for row in report["confusion_matrix_percent"])
    assert report["confusion_matrix_percent"][1] == [0.0, 100.0, 0.0]
    assert report["macro_avg"]["f1"] == pytest.approx((0.5 + 0.8 + 2 / 3) / 3)
    assert report["weighted_avg"]["recall"] == pytest.approx(4 / 6) and report["weighted_avg"]["support"] == 6
    assert "macro avg" in text and "weighted avg" in text and "(100.0%)" in text


# --------------------------------------------------------------------------- broken checkpoints through the CLI


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_corrupt_checkpoint_is_reported_and_kept(malaria_root: Path, tmp_path: Path) -> None:
    models = tmp_path / "models"
    models.mkdir()
    path = models / "model_malaria_last.pt"
    garbage = b"PK\x03\x04 this is not a checkpoint" + bytes(range(256))
    path.write_bytes(garbage)
    result = run_cli(
        *["--dataset", "malaria", "--network", "last", "--data-dir", malaria_root, "--epochs", "1", *QUICK],
        *["--models-dir", models, "--manifest-dir", tmp_path / "manifests"],
    )
    assert result.returncode == 2
    line = one_error(result.stderr)
    assert str(path) in line
    assert path.read_bytes() == garbage
    assert not (models / "model_malaria_last.best.pt").exists()
    assert part_files(models) == []


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_checkpoint_of_another_kind_is_refused(trained, tmp_path: Path) -> None:
    source = trained("malaria_last")
    assert source.result.returncode == 0, source.result.stderr
    models = tmp_path / "models"
    models.mkdir()
    path = models / "model_malaria_every_single_loss.pt"
    shutil.copyfile(source.models / "model_malaria_last.pt", path)
    before = path.read_bytes()
    result = run_cli(
        *["--dataset", "malaria", "--network", "every", "--loss", "last", "--data-dir", source.data_dir],
        *["--epochs", "2", *QUICK, "--models-dir", models, "--manifest-dir", tmp_path / "manifests"],
    )
    assert result.returncode != 0
    line = one_error(result.stderr)
    assert str(path) in line and "network" in line
    assert path.read_bytes() == before


# --------------------------------------------------------------------------- prompts


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_prompt_flow_trains_every_multi_loss(malaria_root: Path, tmp_path: Path) -> None:
    models = tmp_path / "models"
    answers = f"X\nM\n/nonexistent/cells\n{malaria_root}\nE\nE\n"
    result = run_cli(
        *["--epochs", "1", "--image-size", "32", "--workers", "0", "--max-per-class", "8", "--device", "cpu"],
        *["--models-dir", models, "--manifest-dir", tmp_path / "manifests"],
        input=answers,
    )
    assert result.returncode == 0, result.stderr
    no_traceback(result.stderr)
    # The invalid letter and the wrong path were each asked again.
    assert result.stdout.count("Gender (G) or the Malaria (M)") == 2
    assert "Please answer G or M or F." in result.stdout
    assert "/nonexistent/cells: no such folder" in result.stdout
    assert result.stdout.count("Path to the malaria data set") == 2
    checkpoint = torch.load(models / "model_malaria_every_multi_loss.pt", weights_only=True)
    assert checkpoint["network"] == "every" and checkpoint["loss"] == "every" and checkpoint["epoch"] == 1
    assert (tmp_path / "manifests" / "malaria_testing_filenames_every_every.json").is_file()


@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.parametrize(("answers", "flag"), [("M\n", "--data-dir"), ("", "--dataset")])
def test_prompt_end_of_input_names_the_flag(tmp_path: Path, answers: str, flag: str) -> None:
    result = run_cli(
        *["--epochs", "1", "--models-dir", tmp_path / "models", "--manifest-dir", tmp_path / "manifests"],
        input=answers,
    )
    assert result.returncode != 0
    no_traceback(result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error:") and flag in lines[0]
    assert not (tmp_path / "models").exists() or not any((tmp_path / "models").iterdir())


# --------------------------------------------------------------------------- bad inputs
# These fail before any training; model_main.main() is what `python model_main.py` exits with,
# so they run in-process (the subprocess tests above already cover the process boundary).


def test_wrong_layout_is_one_line_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    wrong = tmp_path / "photos"
    (wrong / "cats").mkdir(parents=True)
    code = model_main.main(
        [*["--dataset", "malaria", "--data-dir", str(wrong), "--network", "last", "--epochs", "1", *QUICK]]
        + ["--models-dir", str(tmp_path / "models"), "--manifest-dir", str(tmp_path / "manifests")]
    )
    assert code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    line = one_error(err)
    assert str(wrong) in line and "Parasitized" in line
    assert not (tmp_path / "manifests").exists()


@pytest.mark.parametrize("dataset", ["malaria", "gender", "folder"])
def test_missing_data_folder_is_one_line_error(tmp_path: Path, capsys: pytest.CaptureFixture[str], dataset) -> None:
    missing = tmp_path / "not-there"
    code = model_main.main(
        [*["--dataset", dataset, "--data-dir", str(missing), "--network", "last", "--epochs", "1", *QUICK]]
        + ["--models-dir", str(tmp_path / "models"), "--manifest-dir", str(tmp_path / "manifests")]
    )
    assert code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    line = one_error(err)
    assert str(missing) in line and "no such folder" in line


@pytest.mark.parametrize("flags", [["--image-size", "20"], ["--image-size", "0"], ["--epochs", "0"]])
def test_bad_numbers_are_argparse_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str], flags) -> None:
    with pytest.raises(SystemExit) as caught:
        model_main.main(["--dataset", "malaria", "--data-dir", str(tmp_path), *flags])
    assert caught.value.code == 2
    err = capsys.readouterr().err
    no_traceback(err)
    assert f"{flags[0]} must be" in err


# --------------------------------------------------------------------------- small data sets


def build_patients(root: Path, patients_per_class: int, cells: int) -> Path:
    """A lab's own folder: `patients_per_class` patients per class, `cells` NIH-named cells each."""
    rng = np.random.default_rng(3)
    for offset, name in ((0, "Parasitized"), (100, "Uninfected")):
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for patient in range(1, patients_per_class + 1):
            for k in range(cells):
                image = cell_image(rng, name == "Parasitized", 40)
                image.save(folder / f"C{patient + offset}P{patient}ThinF_IMG_20150918_144104_cell_{k}.png")
    return root


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_three_patients_per_class_train_with_a_note(tmp_path: Path) -> None:
    data = build_patients(tmp_path / "cells", 3, 10)
    models = tmp_path / "models"
    result = run_cli(
        *["--dataset", "malaria", "--data-dir", data, "--network", "last", "--epochs", "1", *QUICK[:-4]],
        *["--device", "cpu", "--models-dir", models],
    )
    assert result.returncode == 0, result.stderr
    no_traceback(result.stderr)
    notes = [line for line in result.stderr.splitlines() if line.startswith("note:")]
    assert notes and any("--split-by file" in note for note in notes), result.stderr
    assert "patients:" in result.stderr and "none in two splits" in result.stderr
    checkpoint = torch.load(models / "model_malaria_last.pt", weights_only=True)
    assert checkpoint["epoch"] == 1
    assert (models / "model_malaria_last.best.pt").is_file()


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_split_by_file_gives_every_split_and_warns_of_the_leak(tmp_path: Path) -> None:
    data = build_patients(tmp_path / "cells", 3, 10)
    result = run_cli(
        *["--dataset", "malaria", "--data-dir", data, "--network", "last", "--epochs", "1", "--split-by", "file"],
        *["--image-size", "32", "--batch-size", "8", "--workers", "0", "--device", "cpu"],
        *["--models-dir", tmp_path / "models"],
    )
    assert result.returncode == 0, result.stderr
    assert "warning:" in result.stderr and "patients sit in two splits" in result.stderr
    metrics = json.loads((tmp_path / "models" / "model_malaria_last.metrics.json").read_text())
    assert metrics["images"] > 0


def test_one_image_per_class_is_a_one_line_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = build_patients(tmp_path / "cells", 1, 1)
    code = model_main.main(
        ["--dataset", "malaria", "--data-dir", str(data), "--network", "last", *QUICK]
        + ["--models-dir", str(tmp_path / "models")]
    )
    assert code == 2
    line = one_error(capsys.readouterr().err)
    assert "at least 2 per class" in line
    assert not (tmp_path / "models").exists() or not any((tmp_path / "models").iterdir())


def test_identity_check_line(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    layout = {"Train": ["1_000001.jpg", "2_000002.jpg"], "Validation": ["3_000003.jpg"], "Test": ["2_000004.jpg"]}
    for split, names in layout.items():
        for label, gender in enumerate(("Female", "Male")):
            folder = tmp_path / "Dataset" / split / gender
            folder.mkdir(parents=True)
            for name in names:
                face_image(rng, label).save(folder / name)
    args = model_main.parse_args(["--dataset", "gender", "--data-dir", str(tmp_path)])
    splits = training_splits("gender", tmp_path)
    line = run.identity_check(model_main.config_of(args), splits)
    assert line.startswith("warning: 1 people sit in two splits") and "2 in train+test" in line
    for gender in ("Female", "Male"):
        folder = tmp_path / "Dataset" / "Test" / gender
        (folder / "2_000004.jpg").rename(folder / "4_000004.jpg")
    line = run.identity_check(model_main.config_of(args), training_splits("gender", tmp_path))
    assert line == "people: 2 in train, 1 in val, 1 in test; none in two splits (identities from the file names)"


# --------------------------------------------------------------------------- EMA, label smoothing, schedule


def test_ema_weights_are_the_hand_computed_average() -> None:
    torch.manual_seed(0)
    network = torch.nn.Sequential(torch.nn.Linear(3, 2))
    decay = 0.6
    trainer = Trainer(network, torch.nn.CrossEntropyLoss(), lr=0.1, ema_decay=decay, show_progress=False)
    expected = {k: v.clone() for k, v in network.state_dict().items()}
    for step in range(30):
        images, labels = torch.randn(4, 3), torch.tensor([0, 1, 0, 1])
        trainer.train_step(images, labels)
        current = network.state_dict()
        # The first step copies the weights; update n moves the average towards them with
        # the ramped decay min(decay, (1 + n) / (10 + n)), which reaches `decay` (0.6) at n = 12.5.
        ramped = min(decay, (1 + step) / (10 + step))
        for key in expected:
            expected[key] = current[key].clone() if step == 0 else ramped * expected[key] + (1 - ramped) * current[key]
    for key, value in trainer.evaluated.state_dict().items():
        torch.testing.assert_close(value, expected[key], msg=key)
    assert not torch.equal(trainer.evaluated.state_dict()["0.weight"], network.state_dict()["0.weight"])


def test_label_smoothing_zero_is_plain_cross_entropy() -> None:
    logits, labels = torch.randn(8, 3), torch.randint(0, 3, (8,))
    plain = torch.nn.functional.cross_entropy(logits, labels)
    zero = run.loss_function(model_main.config_of(model_main.parse_args(["--label-smoothing", "0"])))
    torch.testing.assert_close(zero(logits, labels), plain)
    smoothed = run.loss_function(model_main.config_of(model_main.parse_args(["--label-smoothing", "0.1"])))
    # (1 - eps) * CE + eps * mean over classes of -log p: the formula the flag promises.
    uniform = -logits.log_softmax(1).mean(1).mean()
    torch.testing.assert_close(smoothed(logits, labels), 0.9 * plain + 0.1 * uniform)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_ema_run_saves_the_average_as_best_and_resumes(tmp_path: Path) -> None:
    train, val = _tiny_loaders()
    options = {"ema_decay": 0.9, "schedule": "cosine"}
    torch.manual_seed(0)
    straight = _checkpoint_trainer(Network(), tmp_path / "straight.pt", 2, **options)
    history = straight.train(train, val)
    assert all("val_acc_raw" in row for row in history)
    best = torch.load(tmp_path / "straight.best.pt", weights_only=True)
    kept = {k: v for k, v in straight.evaluated.state_dict().items()}
    if best["epoch"] == 2:
        for key, value in best["net_state_dict"].items():
            torch.testing.assert_close(value, kept[key], msg=key)
    torch.manual_seed(0)
    stopped = _checkpoint_trainer(Network(), tmp_path / "stopped.pt", 2, **options)
    stopped.epochs = 1  # a 2-epoch run interrupted after its first epoch (the cosine still spans 2)
    stopped.train(train, val)
    resumed = _checkpoint_trainer(Network(), tmp_path / "stopped.pt", 2, **options)
    resumed.train(train, val)
    for key, value in straight.evaluated.state_dict().items():
        torch.testing.assert_close(resumed.evaluated.state_dict()[key], value, atol=1e-5, rtol=0, msg=key)
    # The cosine schedule ends at 1 % of the base rate.
    lr = torch.load(tmp_path / "stopped.pt", weights_only=True)["optim_state_dict"]["param_groups"][0]["lr"]
    assert lr == pytest.approx(1e-5)


def test_no_validation_makes_the_last_epoch_best(tmp_path: Path) -> None:
    train, _ = _tiny_loaders()
    trainer = _checkpoint_trainer(Network(), tmp_path / "model.pt", 2)
    history = trainer.train(train, None)
    assert [row["epoch"] for row in history] == [1, 2] and "val_acc" not in history[0]
    best = torch.load(tmp_path / "model.best.pt", weights_only=True)
    assert best["epoch"] == 2 and best["best_val_acc"] is None


# --------------------------------------------------------------------------- the checkout stays clean


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_training_leaves_the_checkout_clean(tmp_path: Path, malaria_root: Path) -> None:
    clone = throwaway_clone(tmp_path / "clone")
    result = run_cli(
        *["--dataset", "malaria", "--data-dir", malaria_root, "--network", "last", "--epochs", "1", *QUICK],
        script=str(clone / "model_main.py"),
        cwd=clone,
    )
    assert result.returncode == 0, result.stderr
    assert git_status(clone) == ""
    assert (clone / "models" / "model_malaria_last.best.pt").is_file()
    assert (clone / "models" / "model_malaria_last.test_files.json").is_file()
