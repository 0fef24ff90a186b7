"""report.py: the report folder opens offline (relative links only, every one present) and shows the galleries."""

from __future__ import annotations

import dataclasses
import html.parser
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import build_malaria, cell_image
from PIL import Image
from test_evaluation import Loaded, confident, purple_detector

from model_data import MalariaSet
from wtl.evaluation import driver
from wtl.evaluation.result import EvaluationResult
from wtl.plot import interventions, report, style, tiles

SIZE = 64
# A file name a browser would take for markup if it were not escaped.
NASTY = 'C3P63ThinF_IMG_<b>&"x"_cell_9.png'


class Links(html.parser.HTMLParser):
    """Every src and href of a page, and whether it has a script element."""

    def __init__(self) -> None:
        super().__init__()
        self.images: list[str] = []
        self.links: list[str] = []
        self.tags: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        for name, value in attrs:
            if name == "src" and value is not None:
                (self.images if tag == "img" else self.links).append(value)
            if name == "href" and value is not None:
                self.links.append(value)


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory: pytest.TempPathFactory) -> tuple[EvaluationResult, Path, Loaded]:
    """A small malaria folder with one stained cell filed as Uninfected (and a nasty name), evaluated."""
    root = tmp_path_factory.mktemp("report_data")
    cells = build_malaria(root, patients=range(1, 9), seed=3)
    stained = sorted((cells / "Parasitized").glob("*.png"))[0]
    shutil.move(stained, cells / "Uninfected" / stained.name)  # a flipped label
    cell_image(np.random.default_rng(9), True, 56).save(cells / "Uninfected" / NASTY)
    model = Loaded(confident(purple_detector()), image_size=SIZE)
    data = MalariaSet(root, "all", size=SIZE)
    result = driver.evaluate(model, data, ["cam", "gradcam"], progress=False, grid=2, sanity_images=4)
    return result, stained, model


def test_evaluate_on_files_finds_the_flipped_label(evaluated: tuple[EvaluationResult, Path, Loaded]) -> None:
    result, stained, _ = evaluated
    suspects = {Path(r.file).name for r in result.galleries["suspect_labels"]}
    assert stained.name in suspects and NASTY in suspects
    assert all(r.label == "Uninfected" and r.prediction == "Parasitized" for r in result.galleries["suspect_labels"])
    assert {Path(r.file).name for r in result.galleries["misclassified"]} >= suspects


def test_the_report_is_self_contained_and_escapes_every_text(
    evaluated: tuple[EvaluationResult, Path, Loaded], tmp_path: Path
) -> None:
    result, stained, model = evaluated
    index = report.write_report(result, tmp_path / "report", model, progress=False, details={"data": str(tmp_path)})
    assert index == tmp_path / "report" / "index.html"
    text = index.read_text(encoding="utf-8")
    page = Links()
    page.feed(text)
    page.close()
    assert "script" not in page.tags
    assert len(page.images) >= 3  # the chart and at least one tile per non-empty gallery
    for link in page.images + page.links:
        assert not link.startswith(("/", "\\")) and ":" not in link, link  # no absolute path, no URL scheme
        assert (index.parent / link).is_file(), link
    assert "http" not in text and "file:" not in text
    assert str(tmp_path) not in text and str(Path.home()) not in text
    assert NASTY not in text and "&lt;b&gt;&amp;&quot;x&quot;" in text
    assert stained.name in text
    for gallery in ("misclassified", "suspect_labels"):
        assert f"{len(result.galleries[gallery])}</h3>" in text
        sheet = index.parent / f"{gallery}.png"
        assert sheet.read_bytes().startswith(b"\x89PNG")
    assert "Sanity check" in text and "fused" not in json.dumps(result.to_json()["methods"])  # a Network: no fused row
    tiles = sorted((index.parent / report.THUMBS).glob("*.png"))
    assert tiles and all(Image.open(t).size == (2 * 2 * SIZE + 2, 2 * SIZE) for t in tiles)
    # The intervention: its table, and the flipped label's cell among the suspects that flip without their blob.
    assert "Intervention: does the model need the stain?" in text and "diffusion" in text
    flips = result.to_json()["intervention_galleries"]["suspect_label_flips"]
    assert stained.name in {Path(r["file"]).name for r in flips}
    assert all(r["before"] > 0.5 > r["after"] for r in flips)
    before_after = sorted((index.parent / interventions.TILES).glob("suspect_label_flips_*.png"))
    assert before_after and all(Image.open(t).size == (3 * 2 * SIZE + 4, 2 * SIZE) for t in before_after)
    assert (index.parent / "suspect_label_flips.png").read_bytes().startswith(b"\x89PNG")


def test_a_report_caps_its_galleries_and_works_without_a_model(
    evaluated: tuple[EvaluationResult, Path, Loaded], tmp_path: Path
) -> None:
    result, _, _ = evaluated
    many = dataclasses.replace(
        result, galleries={**result.galleries, "misclassified": result.galleries["misclassified"] * 5}
    )
    index = report.write_report(many, tmp_path, model=None, max_tiles=3, progress=False)
    text = index.read_text(encoding="utf-8")
    assert f"showing the first 3 of {len(many.galleries['misclassified'])}" in text
    assert len(list((tmp_path / report.THUMBS).glob("misclassified_*.png"))) == 3
    # Written again into the same folder: the old thumbnails go, the links still all resolve.
    index = report.write_report(result, tmp_path, model=None, max_tiles=1, progress=False)
    page = Links()
    page.feed(index.read_text(encoding="utf-8"))
    assert all((tmp_path / link).is_file() for link in page.images)
    # Every thumbnail left in the folder is one the page shows (the old ones went).
    shown = {Path(link).name for link in page.images if Path(link).parent.name == report.THUMBS}
    assert {p.name for p in (tmp_path / report.THUMBS).glob("*.png")} == shown


def test_a_tile_shows_the_cell_its_map_and_the_stain_outline() -> None:
    image = np.full((16, 16, 3), 200, dtype=np.uint8)
    mask = np.zeros((16, 16), dtype=bool)
    mask[4:8, 4:8] = True
    heat = np.zeros((16, 16))
    heat[5, 5] = 1.0
    drawn = tiles.tile(image, heat, mask, scale=1)
    assert drawn.shape == (16, 34, 3) and drawn.dtype == np.uint8
    left, right = drawn[:, :16], drawn[:, 18:]
    assert (left[4, 4] == style.OUTLINE).all() and (left[5, 5] == 200).all()  # outline, not the inside
    assert (right[4, 4] == style.OUTLINE).all() and not (right[10, 10] == 200).all()  # under the jet blend
    assert tiles.outline(mask).sum() == 12
    assert torch.equal(
        torch.from_numpy(tiles.outline(np.ones((3, 3), dtype=bool))),
        torch.tensor([[True, True, True], [True, False, True], [True, True, True]]),
    )
