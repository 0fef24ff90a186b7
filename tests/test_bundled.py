"""The bundled files stay usable: demo cells, the three checkpoints, and the demo's predictions."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from wtl import resources
from wtl.checkpoints import finding
from wtl.checkpoints.loading import load_model
from wtl.data.groups import patient_id, split_of_group
from wtl.data.images import list_images, load_image
from wtl.maps import cam as cams

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "data" / "demo"
BUNDLED = REPO / "models" / "bundled"
MODELS = {
    "model_malaria_last": "last",
    "model_malaria_every_single_loss": "every",
    "model_malaria_every_multi_loss": "every",
}
# What the bundled last-block model predicts for the demo cells that it gets wrong; every other
# cell is classified correctly. A change of weights or preprocessing that moves any prediction fails here.
KNOWN_MISTAKES = {
    "C167P128ReThinF_IMG_20151201_105707_cell_241.png": "Uninfected",  # no visible parasite
    "C125P86ThinF_IMG_20151004_101158_cell_16.png": "Parasitized",  # stained blob at the rim
}


def demo_cells() -> list[tuple[Path, str]]:
    return [(p, c) for c in ("Parasitized", "Uninfected") for p in list_images(DEMO / c)]


def test_demo_cells_are_real_test_patient_cells() -> None:
    cells = demo_cells()
    assert len([c for c in cells if c[1] == "Parasitized"]) == 10
    assert len([c for c in cells if c[1] == "Uninfected"]) == 10
    for path, _ in cells:
        # Never a cell of a patient the bundled models trained on or were selected with.
        assert split_of_group(patient_id(path.name)) == "test", path.name
    assert (DEMO / "README.md").is_file()


@pytest.mark.parametrize("name", sorted(MODELS))
def test_bundled_checkpoints_load_and_are_small(name: str) -> None:
    path = BUNDLED / f"{name}.pt"
    assert path.stat().st_size <= 5 * 1024 * 1024
    model = load_model(path)
    assert model.kind == MODELS[name]
    assert model.class_names == ["Uninfected", "Parasitized"]
    assert model.image_size == 128
    raw = torch.load(path, map_location="cpu", weights_only=True)
    assert {"net_state_dict", "best_val_acc", "epoch"} <= raw.keys()
    metrics = json.loads((BUNDLED / f"{name}.metrics.json").read_text())
    assert metrics["accuracy"] > 0.9


@pytest.mark.parametrize("name", [*sorted(MODELS), "model_gender_last"])
def test_every_bundled_model_ships_its_shared_colour_scale_measured_on_its_test_split(name: str) -> None:
    scale = load_model(BUNDLED / f"{name}.pt").scale
    assert scale is not None and scale.source.startswith("test split")
    assert scale.images == len(_test_files(name)) and (scale.of("cam", "last") or 0) > 1
    assert all(scale.of(method, "last") for method in ("gradcam", "gradcam++", "xgradcam", "layercam", "hirescam"))


def _test_files(name: str) -> list[str]:
    listed = json.loads((BUNDLED / f"{name}.test_files.json").read_text())
    return [file for files in listed.values() for file in files]


def test_bundled_gender_model_is_small_fp32_and_crops_faces() -> None:
    path = BUNDLED / "model_gender_last.pt"
    assert path.stat().st_size <= 5 * 1024 * 1024
    raw = torch.load(path, map_location="cpu", weights_only=True)
    assert {"net_state_dict", "best_val_acc", "epoch"} <= raw.keys() and "optim_state_dict" not in raw
    assert all(v.dtype in (torch.float32, torch.int64) for v in raw["net_state_dict"].values())
    model = load_model(path)
    assert model.kind == "last" and model.class_names == ["Female", "Male"]
    assert model.image_size == 128 and model.preprocess == "center-crop"
    metrics = json.loads((BUNDLED / "model_gender_last.metrics.json").read_text())
    assert metrics["accuracy"] >= 0.9 and metrics["images"] == 600
    # The split it was scored on: all 600 shared test faces (CelebA's identity-disjoint test partition).
    listed = json.loads((BUNDLED / "model_gender_last.test_files.json").read_text())
    assert sum(len(names) for names in listed.values()) == 600


def where_to_look(*args: str) -> subprocess.CompletedProcess:
    """The visualizer as a user runs it from the repository's root, headless."""
    return subprocess.run(
        [sys.executable, "where_to_look.py", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=240,
        env={**os.environ, "MPLBACKEND": "Agg"},
    )


@pytest.mark.slow
def test_gender100_finds_the_bundled_gender_model(tmp_path: Path, gender_root: Path) -> None:
    run = where_to_look(
        "gender100",
        "--data-dir",
        str(gender_root),
        "--count",
        "3",
        "--out",
        str(tmp_path),
        "--models-dir",
        str(tmp_path / "no_models_here"),
    )
    assert run.returncode == 0, run.stderr
    assert "model: models/bundled/model_gender_last.pt (bundled)" in run.stdout
    assert (tmp_path / "gender100.png").is_file() and (tmp_path / "gender_overlay.png").is_file()


@pytest.mark.parametrize("name", sorted(MODELS))
def test_the_visualizer_finds_the_bundled_manifests(name: str) -> None:
    manifest = finding.test_manifest(load_model(BUNDLED / f"{name}.pt").path)
    assert manifest == BUNDLED / f"{name}.test_files.json"
    listed = json.loads(manifest.read_text())
    assert set(listed) == {"InfectedFilenames", "UninfectedFilenames"}
    demo_names = {p.name for p, _ in demo_cells()}
    assert demo_names <= set(listed["InfectedFilenames"]) | set(listed["UninfectedFilenames"])


def test_a_checkpoint_without_a_manifest_beside_it_falls_back_to_data(tmp_path: Path, monkeypatch) -> None:
    # The original project's layout: the manifest under its seed name in data/.
    checkpoint = tmp_path / "model_malaria_every_multi_loss.pt"
    checkpoint.write_bytes((BUNDLED / checkpoint.name).read_bytes())
    data = tmp_path / "data"
    data.mkdir()
    (data / "malaria_testing_filenames_every_every.json").write_text('{"InfectedFilenames": []}')
    monkeypatch.setattr(resources, "seed_manifest_dir", lambda: data)
    assert finding.test_manifest(load_model(checkpoint).path) == data / "malaria_testing_filenames_every_every.json"
    (data / "malaria_testing_filenames_every_every.json").unlink()
    assert finding.test_manifest(load_model(checkpoint).path) is None


def test_demo_predictions_are_stable() -> None:
    model = load_model(BUNDLED / "model_malaria_last.pt")
    cells = demo_cells()
    images = torch.stack([load_image(p) for p, _ in cells])
    result = cams.explain_last_block(model.network, images)
    predicted = [model.class_names[int(i)] for i in result.logits.argmax(1)]
    for (path, truth), guess in zip(cells, predicted, strict=True):
        assert guess == KNOWN_MISTAKES.get(path.name, truth), path.name


@pytest.mark.slow
def test_demo_command_renders_everything(tmp_path: Path) -> None:
    run = where_to_look("demo", "--out", str(tmp_path))
    assert run.returncode == 0, run.stderr
    assert "18 of 20 demo cells classified correctly" in run.stdout
    pngs = {p.name for p in tmp_path.glob("*.png")}
    assert "demo_contact_sheet.png" in pngs
    assert len([p for p in pngs if p.endswith("_single.png")]) == 20
    assert len([p for p in pngs if "_multi_" in p]) == 6
