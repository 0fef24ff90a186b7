"""The data-randomisation test: training on permuted labels (--shuffle-labels), marked as such, and compared."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from test_training import QUICK

from wtl.checkpoints.loading import load_model
from wtl.data.shuffling import chance_agreement, label_agreement, shuffle_labels


def test_shuffled_labels_keep_the_class_counts_and_agree_with_the_truth_at_chance():
    rng = np.random.default_rng(0)
    samples = [(Path(f"cell_{i}.png"), int(label)) for i, label in enumerate(rng.integers(0, 2, 4000))]
    shuffled = shuffle_labels(samples, seed=0)
    assert [p for p, _ in shuffled] == [p for p, _ in samples]  # the same files, in the same order
    assert sorted(label for _, label in shuffled) == sorted(label for _, label in samples)
    assert abs(label_agreement(samples, shuffled) - chance_agreement(samples)) < 0.03  # 4,000 draws: +-0.016 sd
    assert shuffle_labels(samples, seed=0) == shuffled and shuffle_labels(samples, seed=1) != shuffled
    three = [(Path(f"{i}.png"), i % 3) for i in range(3000)]
    assert chance_agreement(three) == pytest.approx(1 / 3)
    assert abs(label_agreement(three, shuffle_labels(three, 5)) - 1 / 3) < 0.03


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_shuffle_labels_trains_a_marked_twin_and_evaluate_compares_its_maps(cli, malaria_root: Path, tmp_path: Path):
    flags = ["--dataset", "malaria", "--data-dir", malaria_root, "--network", "last", "--epochs", "1", *QUICK]
    real = cli(*flags, "--models-dir", tmp_path / "real")
    shuffled = cli(*flags, "--shuffle-labels", "--models-dir", tmp_path / "real")  # the same folder: its own name
    assert real.returncode == 0 and shuffled.returncode == 0, shuffled.stderr
    assert "shuffled labels: the 24 training labels are permuted (seed 0)" in shuffled.stderr
    twin_path = tmp_path / "real" / "model_malaria_last_shuffled_labels.best.pt"
    real_path = tmp_path / "real" / "model_malaria_last.best.pt"
    assert real_path.is_file() and twin_path.is_file()
    record = torch.load(twin_path, weights_only=True)["shuffled_labels"]
    assert record["seed"] == 0 and record["chance"] == pytest.approx(0.5) and 0.2 <= record["agreement"] <= 0.8
    assert torch.load(real_path, weights_only=True)["shuffled_labels"] is None
    twin = load_model(twin_path)
    assert twin.shuffled_labels and "shuffled labels" in twin.marker and not load_model(real_path).marker

    cell = next((malaria_root / "cell_images" / "Parasitized").glob("*.png"))
    single = cli("single", "--model", twin_path, "--image", cell, "--out", tmp_path / "out", script="where_to_look.py")
    assert single.returncode == 0 and "trained on shuffled labels" in single.stdout

    evaluated = cli(
        *["evaluate", "--model", real_path, "--sanity-model", twin_path, "--data-dir", malaria_root],
        *["--split", "all", "--methods", "cam", "--sanity", "0", "--bootstrap", "300", "--out", tmp_path / "out"],
        script="where_to_look.py",
    )
    assert evaluated.returncode == 0, evaluated.stderr
    assert "data randomisation: rank correlation" in evaluated.stdout
    report = json.loads((tmp_path / "out" / "evaluate_model_malaria_last_all.json").read_text())
    compared = report["data_randomisation"]
    assert compared["shuffled_labels"] is True and compared["model"] == twin_path.name
    cam = compared["methods"]["cam"]
    assert cam["images"] > 0 and -1 <= cam["spearman"] <= 1
    assert cam["spearman_ci95"][0] <= cam["spearman"] <= cam["spearman_ci95"][1]
    assert set(compared["methods"]) >= {"cam", "gradcam", "gradcam++"}
