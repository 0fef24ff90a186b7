"""The author's "it could be smaller": --blocks 3 end to end, the parameter summary, the history plot, and the
statistics every trained checkpoint carries for pictures unlike its training data."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import face_image, run_cli

import model_main
from wtl.checkpoints.loading import load_model
from wtl.metrics import ood
from wtl.nets.seed import Architecture, build_network
from wtl.nets.summary import format_summary, summary, total
from wtl.plot.history import history_figure

QUICK = ["--image-size", "32", "--batch-size", "8", "--workers", "0", "--max-per-class", "12", "--device", "cpu"]


@pytest.mark.parametrize("kind", ["last", "every"])
@pytest.mark.parametrize("blocks, kernel, width", [(4, 5, 32), (3, 5, 32), (2, 3, 8), (3, 3, 16)])
def test_summary_total_is_every_parameter(kind: str, blocks: int, kernel: int, width: int) -> None:
    network = build_network(kind, 3, architecture=Architecture(blocks, kernel, width))
    rows = summary(network, 64)
    assert total(rows) == sum(p.numel() for p in network.parameters())
    shapes = [row.output_shape for row in rows if row.name.startswith("block")]
    assert shapes == [(width * 2**i, 64 // 2 ** (i + 1), 64 // 2 ** (i + 1)) for i in range(blocks)]
    assert rows[-1].name == "classifier" and rows[-1].output_shape == (3,)
    assert sum(row.name.startswith("transform") for row in rows) == (blocks - 1 if kind == "every" else 0)
    # Block 1: a k x k conv from RGB (weights and biases) and its batch norm (scale and shift).
    assert rows[0].parameters == 3 * width * kernel * kernel + width + 2 * width
    assert format_summary(rows).splitlines()[-1].split()[-1] == f"{total(rows):,}"


def test_summary_flag_prints_and_trains_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = model_main.main(["--summary", "--network", "every", "--blocks", "3", "--models-dir", str(tmp_path / "m")])
    assert code == 0
    out = capsys.readouterr().out
    network = build_network("every", 2, architecture=Architecture(3))
    assert f"total{'':>2}" in out and f"{sum(p.numel() for p in network.parameters()):,}" in out
    assert "block 3" in out and "block 4" not in out and "transform 2" in out
    assert not (tmp_path / "m").exists()  # nothing asked, read or written


def test_history_figure_has_one_point_per_epoch() -> None:
    rows = [
        {"epoch": e, "train_loss": 1 / e, "train_acc": 50 + e, "val_loss": 1.1 / e, "val_acc": 49 + e}
        for e in (1, 2, 3)
    ]
    figure = history_figure(rows)
    lines = [line for ax in figure.axes for line in ax.get_lines() if line.get_label() in ("training", "validation")]
    assert len(lines) == 4 and all(list(line.get_xdata()) == [1, 2, 3] for line in lines)
    with pytest.raises(ValueError):
        history_figure([])


@pytest.fixture(scope="module")
def three_blocks(malaria_root: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One epoch of each network at --blocks 3 (the last-block one resumed to a second epoch)."""
    runs = {}
    for network in ("last", "every"):
        models = tmp_path_factory.mktemp(f"blocks3_{network}")
        flags = ["--dataset", "malaria", "--data-dir", malaria_root, "--network", network, "--loss", "every"]
        result = run_cli(*flags, "--blocks", "3", "--epochs", "1", *QUICK, "--models-dir", models)
        assert result.returncode == 0, result.stderr
        assert "block 3" in result.stderr and "block 4" not in result.stderr  # the summary, at the start
        if network == "last":
            again = run_cli(*flags, "--blocks", "3", "--epochs", "2", *QUICK, "--models-dir", models)
            assert again.returncode == 0, again.stderr
            assert "resuming" in again.stderr and "after epoch 1 of 2" in again.stderr
        runs[network] = models
    return runs


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_three_blocks_train_resume_and_keep_their_history(three_blocks: dict[str, Path]) -> None:
    models = three_blocks["last"]
    checkpoint = torch.load(models / "model_malaria_last.pt", weights_only=True)
    assert checkpoint["epoch"] == 2 and checkpoint["architecture"] == {"blocks": 3, "kernel": 5, "width": 32}
    assert [row["epoch"] for row in checkpoint["history"]] == [1, 2]
    loaded = load_model(models / "model_malaria_last.best.pt")
    assert loaded.network.architecture == Architecture(3) and len(loaded.network.block_ends) == 3
    # The history plot was drawn again after the resume, with both epochs.
    assert (models / "model_malaria_last.history.png").stat().st_size > 10_000
    metrics = json.loads((models / "model_malaria_last.metrics.json").read_text())
    figure = history_figure(metrics["history"])
    assert all(list(line.get_xdata()) == [1, 2] for ax in figure.axes for line in ax.get_lines()[:2])


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_three_blocks_load_in_single_and_multi(three_blocks: dict[str, Path], tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    face_image(rng, 1, 48).save(tmp_path / "face.png")
    cell = next((Path(__file__).resolve().parents[1] / "data" / "demo" / "Parasitized").glob("*.png"))
    last = three_blocks["last"] / "model_malaria_last.best.pt"
    single = run_cli(
        "single",
        "--model",
        last,
        "--image",
        cell,
        tmp_path / "face.png",
        "--out",
        tmp_path / "s",
        "--save-npz",
        script="where_to_look.py",
    )
    assert single.returncode == 0, single.stderr
    assert (tmp_path / "s" / f"{cell.stem}_single.png").is_file()
    every = three_blocks["every"] / "model_malaria_every_multi_loss.best.pt"
    multi = run_cli(
        "multi", "--model", every, "--image", cell, "--out", tmp_path / "m", "--save-npz", script="where_to_look.py"
    )
    assert multi.returncode == 0, multi.stderr
    numbers = np.load(tmp_path / "m" / f"{cell.stem}_multi_model_malaria_every_multi_loss.npz")
    assert {f"cam_block{b}" for b in (1, 2, 3)} <= set(numbers.files) and "cam_block4" not in numbers.files
    assert numbers["cam_block3"].shape == (4, 4)  # 32 px halved three times
    # Training stored the statistics for pictures unlike the training cells: a noise face is one.
    statistics = ood.statistics_of(load_model(last).ood)
    assert statistics is not None and len(statistics.means) == 3
    assert "validation split" in statistics.chosen_on
    face = np.load(tmp_path / "s" / "face_single.npz")
    assert bool(face["out_of_distribution"]) and float(face["ood_score"]) > float(face["ood_threshold"])
    assert "warning: face.png is unlike the pictures model_malaria_last.best.pt was trained on" in single.stdout
