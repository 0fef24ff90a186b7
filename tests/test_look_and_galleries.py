"""--cmap/--alpha/--grey reach the pictures; evaluate --gallery tp/tn/fp/fn picks, orders and shows its cells."""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib
import numpy as np
import pytest
from conftest import run_cli
from PIL import Image

from wtl.cli.common import look_of
from wtl.errors import UsageError
from wtl.evaluation.galleries import outcome_galleries, positive_class
from wtl.evaluation.result import ImageRecord
from wtl.plot.maps import single_figure
from wtl.plot.style import Look, colour_map
from wtl.plot.tiles import tile

REPO = Path(__file__).resolve().parents[1]


def flags(cmap: str | None = None, alpha: float = 0.5, grey: bool = False) -> argparse.Namespace:
    return argparse.Namespace(cmap=cmap, alpha=alpha, grey=grey)


def test_the_flags_make_a_look_and_refuse_what_cannot_be_drawn() -> None:
    assert look_of(flags()) == Look()  # jet at 0.5 over the picture in colour: the default, unchanged
    assert look_of(flags(), cmap="magma").cmap == "magma"  # a command's own default
    assert look_of(flags("Reds", 0.3, True)) == Look(cmap="Reds", alpha=0.3, grey=True)
    with pytest.raises(UsageError, match="--cmap nosuch: not a matplotlib colour map"):
        look_of(flags("nosuch"))
    with pytest.raises(UsageError, match="between 0 and 1"):
        look_of(flags(alpha=1.5))


def test_the_look_is_what_the_tiles_and_figures_draw() -> None:
    rng = np.random.default_rng(0)
    cell = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
    heat = np.linspace(0, 1, 256).reshape(16, 16)
    mask = np.zeros((16, 16), dtype=bool)
    # Opacity 0 over a grey underlay: the right panel is the picture in grey.
    right = tile(cell, heat, mask, scale=1, look=Look(alpha=0.0, grey=True))[:, 18:]
    assert (right[..., 0] == right[..., 1]).all() and (right[..., 1] == right[..., 2]).all()
    # Opacity 1: exactly the colour map's colours.
    coloured = tile(cell, heat, mask, scale=1, look=Look(cmap="Reds", alpha=1.0))[:, 18:]
    assert np.array_equal(coloured, colour_map(heat, "Reds"))
    figure = single_figure(cell, heat, "title", look=Look(cmap="magma", alpha=0.3, grey=True))
    picture, heatmap = figure.axes[1].get_images()
    assert heatmap.get_cmap().name == "magma" and heatmap.get_alpha() == 0.3
    shown = np.asarray(picture.get_array())
    assert (shown[..., 0] == shown[..., 2]).all()  # the underlay is grey
    assert "Reds" in matplotlib.colormaps


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_single_draws_with_the_flags(tmp_path: Path) -> None:
    cell = next((REPO / "data" / "demo" / "Parasitized").glob("*.png"))
    pictures = {}
    for name, extra in (("default", []), ("reds", ["--cmap", "Reds", "--alpha", "0.8", "--grey"])):
        result = run_cli("single", "--image", cell, "--out", tmp_path / name, *extra, script="where_to_look.py")
        assert result.returncode == 0, result.stderr
        pictures[name] = np.asarray(Image.open(tmp_path / name / f"{cell.stem}_single.png").convert("RGB"))
    assert pictures["default"].shape == pictures["reds"].shape
    assert not np.array_equal(pictures["default"], pictures["reds"])
    right = pictures["reds"][:, pictures["reds"].shape[1] // 2 :].reshape(-1, 3).astype(int)
    # Reds over grey has no pixel much bluer than it is red (jet's blue end would be).
    assert (right[:, 2] - right[:, 0] < 40).all()
    bad = run_cli("single", "--image", cell, "--cmap", "nosuch", "--out", tmp_path, script="where_to_look.py")
    assert bad.returncode == 2 and bad.stderr.strip().startswith("error: --cmap nosuch")


def records() -> list[ImageRecord]:
    rows = [
        ("a", "Parasitized", "Parasitized", 0.7),
        ("b", "Parasitized", "Parasitized", 0.99),
        ("c", "Uninfected", "Uninfected", 0.8),
        ("d", "Uninfected", "Parasitized", 0.6),
        ("e", "Uninfected", "Parasitized", 0.95),
        ("f", "Parasitized", "Uninfected", 0.9),
    ]
    return [ImageRecord(file, label, prediction, p, 0) for file, label, prediction, p in rows]


def test_outcome_galleries_are_the_confusion_cells_most_confident_first() -> None:
    names = ["Uninfected", "Parasitized"]
    found = outcome_galleries(records(), names, ["tp", "tn", "fp", "fn"])
    assert {k: [r.file for r in v] for k, v in found.items()} == {
        "tp": ["b", "a"],
        "tn": ["c"],
        "fp": ["e", "d"],
        "fn": ["f"],
    }
    assert set(outcome_galleries(records(), names, ["fn"])) == {"fn"}
    assert outcome_galleries(records(), names, []) == {}
    assert positive_class(["Female", "Male"]) == 1 and positive_class(names) == 1
    with pytest.raises(ValueError, match="two classes"):
        positive_class(["circles", "squares", "stripes"])
    with pytest.raises(ValueError, match="unknown gallery"):
        outcome_galleries(records(), names, ["xx"])


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_evaluate_gallery_adds_them_to_the_report(tmp_path: Path) -> None:
    result = run_cli(
        "evaluate",
        "--model",
        REPO / "models" / "bundled" / "model_malaria_last.pt",
        "--data-dir",
        REPO / "data" / "demo",
        "--split",
        "all",
        "--methods",
        "cam",
        "--sanity",
        "0",
        "--faithful-images",
        "2",
        "--gallery",
        "tn",
        "fn",
        "--out",
        tmp_path,
        "--device",
        "cpu",
        script="where_to_look.py",
    )
    assert result.returncode == 0, result.stderr
    report = tmp_path / "evaluate_model_malaria_last_all_report"
    index = (report / "index.html").read_text()
    assert "True negatives" in index and "False negatives" in index and "True positives" not in index
    assert "positive is Parasitized" in index and "the most confident first" in index
    assert (report / "tn.png").is_file() and not (report / "tp.png").exists()
    assert len(list((report / "thumbs").glob("tn_*.png"))) >= 5  # most of the 10 uninfected demo cells
