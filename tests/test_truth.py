"""Ground truth of one's own (wtl.data.truth) and the mask metrics (wtl.metrics.localisation): geometry, files,
bad input in one line, and `evaluate --masks/--boxes/--points` end to end against a hand computation."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import error_lines, run_cli
from PIL import Image

from wtl.cli import main as cli_main
from wtl.data.images import read_image_uint8
from wtl.data.truth import (
    Frame,
    GroundTruth,
    boxes_to_input,
    check_matches,
    clip_box,
    load_truth,
    mask_to_input,
    points_to_input,
    read_mask,
    read_table,
)
from wtl.errors import DatasetError
from wtl.metrics.localisation import peak_distances, relevance_mass, relevance_rank

# --------------------------------------------------------------------------- geometry


def box_on_picture(width: int, height: int, box: tuple[int, int, int, int]) -> np.ndarray:
    """The box drawn on a picture of its own size: columns x0 <= x < x1, rows y0 <= y < y1."""
    mask = np.zeros((height, width), dtype=bool)
    x0, y0, x1, y1 = box
    mask[y0:y1, x0:x1] = True
    return mask


def test_frame_keeps_the_centred_square_of_a_face_and_scales_it() -> None:
    face = Frame(178, 218, 128, "center-crop")
    assert face.kept == (0, 20, 178, 198)
    assert face.to_input(89, 109) == pytest.approx((64.0, 64.0))  # the face's centre is the input's centre
    cell = Frame(200, 100, 128, "squash")
    assert cell.kept == (0, 0, 200, 100) and cell.to_input(100, 50) == (64.0, 64.0)


@pytest.mark.parametrize(("width", "height", "preprocess"), [(178, 218, "center-crop"), (150, 90, "squash")])
def test_a_box_lands_where_its_mask_does_through_the_same_preprocessing(width: int, height: int, preprocess: str):
    rng = np.random.default_rng(0)
    frame = Frame(width, height, 128, preprocess)
    for _ in range(20):
        x0, y0 = int(rng.integers(0, width - 8)), int(rng.integers(0, height - 8))
        box = (x0, y0, x0 + int(rng.integers(3, 60)), y0 + int(rng.integers(3, 60)))
        box = (box[0], box[1], min(box[2], width), min(box[3], height))
        from_box, clipped = boxes_to_input([box], frame)
        from_mask = mask_to_input(box_on_picture(width, height, box), 128, preprocess)
        if from_mask.any():  # a sliver in the cropped-off margin is in neither
            assert torch.equal(from_box, from_mask), box
        assert clipped == 0


def test_a_box_on_a_face_lands_where_the_network_sees_it() -> None:
    """A red box painted on a 178 x 218 face: the red pixels of the network's input are the box's mask."""
    picture = np.full((218, 178, 3), 40, dtype=np.uint8)
    box = (30, 50, 110, 120)
    picture[box_on_picture(178, 218, box)] = (250, 0, 0)
    path = Path(__file__).parent / "_face_box.png"
    try:
        Image.fromarray(picture).save(path)
        seen = read_image_uint8(path, 128, "center-crop")
    finally:
        path.unlink(missing_ok=True)
    red = (seen[0] > 150) & (seen[1] < 80)
    mask, _ = boxes_to_input([box], Frame(178, 218, 128, "center-crop"))
    overlap = (red & mask).sum() / (red | mask).sum()
    assert overlap > 0.9  # all but the antialiased edge
    assert mask[:, : int(30 * 128 / 178)].sum() == 0 and mask[: int(30 * 128 / 178), :].sum() == 0


def test_boxes_outside_the_picture_are_clipped_and_counted() -> None:
    assert clip_box((-5, 10, 20, 30), 50, 50) == ((0.0, 10.0, 20.0, 30.0), True)
    assert clip_box((60, 60, 80, 80), 50, 50) == (None, True)
    assert clip_box((20, 30, 10, 5), 50, 50) == ((10.0, 5.0, 20.0, 30.0), False)  # corners in any order
    mask, clipped = boxes_to_input([(-5, -5, 10, 10), (40, 40, 60, 60), (100, 100, 120, 120)], Frame(50, 50, 50))
    assert clipped == 3 and mask.sum() == 10 * 10 + 10 * 10
    tiny, _ = boxes_to_input([(10.2, 10.2, 10.4, 10.4)], Frame(50, 50, 25))  # thinner than an input pixel
    assert tiny.sum() == 1 and tiny[5, 5]


def test_points_mark_their_pixel_and_those_outside_are_counted() -> None:
    mask, outside = points_to_input([(10, 20), (49.9, 0), (50, 10), (-1, 3)], Frame(50, 50, 50))
    assert outside == 2 and mask.sum() == 2 and mask[20, 10] and mask[0, 49]
    face, cut = points_to_input([(89, 10), (89, 109)], Frame(178, 218, 128, "center-crop"))
    assert cut == 1 and face[64, 64]  # (89, 10) lies above the centred square the network sees


# --------------------------------------------------------------------------- files


def save(path: Path, array: np.ndarray, **options) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, **options)
    return path


def test_mask_files_of_any_encoding(tmp_path: Path) -> None:
    truth = np.zeros((20, 30), dtype=bool)
    truth[5:12, 8:20] = True
    for name, array, options in [
        ("ones.png", truth.astype(np.uint8), {}),
        ("full.png", truth.astype(np.uint8) * 255, {}),
        ("noisy.jpg", truth.astype(np.uint8) * 255, {"quality": 80}),
    ]:
        read = read_mask(save(tmp_path / name, array, **options))
        assert (read == truth).mean() > 0.99, name
    rgba = np.zeros((20, 30, 4), dtype=np.uint8)
    rgba[truth] = (255, 255, 255, 255)
    assert np.array_equal(read_mask(save(tmp_path / "alpha.png", rgba)), truth)
    assert not read_mask(save(tmp_path / "black.png", np.zeros((20, 30), dtype=np.uint8))).any()
    (tmp_path / "broken.png").write_bytes(b"not a png")
    with pytest.raises(DatasetError, match="not a readable mask image"):
        read_mask(tmp_path / "broken.png")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("name,x0,y0\na.png,1,2\n", "needs the columns file,x0,y0,x1,y1 \\(found name,x0,y0\\)"),
        ("file,x0,y0,x1,y1\na.png,1,2,three,4\n", "line 2: x1 is 'three', not a number"),
        ("file,x0,y0,x1,y1\n", "has no rows"),
        ("file,x0,y0,x1,y1\n,1,2,3,4\n", "line 2: no file name"),
    ],
)
def test_a_malformed_csv_is_one_line(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "boxes.csv"
    path.write_text(text)
    with pytest.raises(DatasetError, match=message) as info:
        read_table(path, "boxes")
    assert "\n" not in str(info.value)


def test_rows_per_file_and_matching_by_name(tmp_path: Path) -> None:
    path = tmp_path / "boxes.csv"
    path.write_text(
        "File, X0, y0, x1, y1\ncat/001.jpg,1,2,3,4\ncat/001.jpg,5,6,7,8\ndog/001.jpg,0,0,1,1\n7.png,0,0,2,2\n"
    )
    rows = read_table(path, "boxes")
    assert rows["cat/001.jpg"] == [(1, 2, 3, 4), (5, 6, 7, 8)]
    truth = load_truth("boxes", path, 16, "squash")
    # The same stem in two class folders is told apart by the folder; a unique stem matches alone.
    assert truth.entry_for(Path("/data/cat/001.png")) == "cat/001.jpg"
    assert truth.entry_for(Path("/data/dog/001.png")) == "dog/001.jpg"
    assert truth.entry_for(Path("/data/x/7.jpg")) == "7.png"
    assert truth.entry_for(Path("/data/bird/001.png")) is None  # ambiguous without its folder
    masks = tmp_path / "masks"
    save(masks / "cell_12_mask.png", np.full((4, 4), 255, dtype=np.uint8))
    assert load_truth("masks", masks, 16, "squash").entry_for(Path("/d/Parasitized/cell_12.png")) == "cell_12_mask.png"


def test_counts_of_what_is_missing_empty_clipped_and_unmatched(tmp_path: Path) -> None:
    pictures = [save(tmp_path / "pics" / "a" / f"p{i}.png", np.zeros((10, 10, 3), dtype=np.uint8)) for i in range(4)]
    path = tmp_path / "boxes.csv"
    path.write_text("file,x0,y0,x1,y1\np0.png,2,2,6,6\np1.png,5,5,30,30\np2.png,20,20,30,30\nq9.png,1,1,2,2\n")
    truth = load_truth("boxes", path, 10, "squash")
    masks = [truth.mask(p) for p in pictures]
    assert masks[0].sum() == 16 and masks[1].sum() == 25 and masks[2].sum() == 0 and masks[3] is None
    assert truth.missing == ["p3.png"] and truth.empty == ["p2.png"] and truth.clipped == 2
    assert truth.unmatched() == ["q9.png"]
    notes = truth.notes("explained pictures")
    assert notes[0] == f"ground truth: boxes from {path}, for 3 of the 4 explained pictures"
    assert any("1 of the 4 explained pictures have no box (e.g. p3.png)" in n for n in notes)
    assert any("1 of them have an empty box at the model's input (e.g. p2.png)" in n for n in notes)
    assert any("2 boxes reached outside their picture and were clipped" in n for n in notes)
    assert any("1 boxes match no picture" in n and "q9.png" in n for n in notes)
    # Reading again (the report's tiles) counts nothing twice.
    truth.mask(pictures[3], count=False)
    assert truth.missing == ["p3.png"]
    check_matches(truth, pictures, "test")  # three of them match: fine
    stranger = GroundTruth("boxes", path, {f"other_{i}.png": [(0.0, 0.0, 1.0, 1.0)] for i in range(4)}, 10)
    with pytest.raises(DatasetError, match="none of its 4 boxes matches a picture of the test split") as info:
        check_matches(stranger, pictures, "test")
    assert "\n" not in str(info.value) and "other_0.png" in str(info.value)


def test_missing_sources_are_one_line(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="no such folder of masks"):
        load_truth("masks", tmp_path / "nope", 16, "squash")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="holds no mask images"):
        load_truth("masks", tmp_path / "empty", 16, "squash")
    with pytest.raises(DatasetError, match="no such points CSV"):
        load_truth("points", tmp_path / "points.csv", 16, "squash")


# --------------------------------------------------------------------------- metrics


def test_relevance_mass_and_rank_by_hand() -> None:
    heat = torch.tensor([[[0.0, 1.0, 0.5], [0.2, 0.0, 0.3], [0.0, 0.0, 1.0]]])
    mask = torch.tensor([[[False, True, True], [False, False, False], [False, False, False]]])
    # Mass: (1.0 + 0.5) / (1.0 + 0.5 + 0.2 + 0.3 + 1.0) = 1.5 / 3.0.
    assert float(relevance_mass(heat, mask)[0]) == pytest.approx(0.5)
    # Rank: |mask| = 2; the two highest pixels are (0, 1) = 1.0 and (2, 2) = 1.0 (tie, pixel order): one inside.
    assert float(relevance_rank(heat, mask)[0]) == pytest.approx(0.5)
    empty = torch.zeros_like(mask)
    assert math.isnan(float(relevance_mass(heat, empty)[0])) and math.isnan(float(relevance_rank(heat, empty)[0]))
    assert math.isnan(float(relevance_mass(torch.zeros_like(heat), mask)[0]))  # no mass at all
    inside = torch.zeros_like(heat)
    inside[mask] = 1.0
    assert float(relevance_mass(inside, mask)[0]) == 1.0 and float(relevance_rank(inside, mask)[0]) == 1.0
    with pytest.raises(ValueError, match="must be the same"):
        relevance_mass(heat, mask[:, :2])


# --------------------------------------------------------------------------- evaluate end to end


def hand_pointing(heats: np.ndarray, masks: np.ndarray) -> dict[str, float]:
    """The pointing game by brute force: the peak's distance to every mask pixel, the nearest counted."""
    distances = []
    for heat, mask in zip(heats, masks):
        if not mask.any():
            continue
        row, column = np.unravel_index(int(np.argmax(heat)), heat.shape)
        ys, xs = np.nonzero(mask)
        distances.append(float(np.sqrt(((ys - row) ** 2 + (xs - column) ** 2).min())))
    hits = np.asarray(distances)
    return {f"pointing_{t}px": float((np.round(hits**2) <= t**2).mean()) for t in (15, 8, 4, 0)}


@pytest.fixture(scope="module")
def squares(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Pictures of two classes, each with one bright rectangle whose mask, box and centre point are known,
    and a model trained on them by model_main.py."""
    root = tmp_path_factory.mktemp("squares")
    rng = np.random.default_rng(3)
    data, masks, dots = root / "data", root / "masks", root / "dots"
    boxes, points = ["file,x0,y0,x1,y1"], ["file,x,y"]
    for cls, colour in (("yellow", (250, 240, 40)), ("cyan", (40, 240, 250))):
        for i in range(12):
            picture = rng.integers(0, 80, (32, 32, 3)).astype(np.uint8)
            x0, y0 = (int(v) for v in rng.integers(0, 22, 2))
            w, h = (int(v) for v in rng.integers(4, 10, 2))
            picture[y0 : y0 + h, x0 : x0 + w] = colour
            name = f"{cls}_{i:02d}"
            save(data / cls / f"{name}.png", picture)
            save(masks / cls / f"{name}.png", box_on_picture(32, 32, (x0, y0, x0 + w, y0 + h)).astype(np.uint8) * 255)
            boxes.append(f"{cls}/{name}.png,{x0},{y0},{x0 + w},{y0 + h}")
            cx, cy = x0 + w // 2, y0 + h // 2
            points.append(f"{name}.png,{cx + 0.5},{cy + 0.5}")
            dot = np.zeros((32, 32), dtype=np.uint8)
            dot[cy, cx] = 255
            save(dots / f"{name}.png", dot)
    (root / "boxes.csv").write_text("\n".join(boxes) + "\n")
    (root / "points.csv").write_text("\n".join(points) + "\n")
    models = root / "models"
    flags = ["--dataset", "folder", "--network", "last", "--epochs", "1", "--image-size", "32", "--workers", "0"]
    trained = run_cli(*flags, "--data-dir", data, "--models-dir", models, "--device", "cpu")
    assert trained.returncode == 0, trained.stderr
    return {"root": root, "data": data, "masks": masks, "dots": dots, "model": models / "model_data_last.best.pt"}


def evaluate_flags(squares: dict[str, Path], out: Path, *flags: str | Path) -> list[str]:
    return [
        "evaluate",
        *map(str, ["--model", squares["model"], "--data-dir", squares["data"], "--split", "all", "--methods", "cam"]),
        *map(str, ["--sanity", "0", "--faithful-images", "1", "--device", "cpu", "--out", out, *flags]),
    ]


def evaluate(squares: dict[str, Path], out: Path, *flags: str | Path) -> tuple[dict, str]:
    """`where_to_look.py evaluate` as a real subprocess: (its JSON, what it printed)."""
    done = run_cli(*evaluate_flags(squares, out, *flags), script="where_to_look.py")
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    return json.loads((out / "evaluate_model_data_last_all.json").read_text()), done.stdout


def evaluate_here(capsys: pytest.CaptureFixture[str], squares: dict[str, Path], out: Path, *flags: str | Path):
    """The same command line through the CLI's own main() in this process (no second start-up of torch):
    (exit code, its JSON or None, stdout, stderr)."""
    code = cli_main.main(evaluate_flags(squares, out, *flags))
    printed = capsys.readouterr()
    path = out / "evaluate_model_data_last_all.json"
    return code, json.loads(path.read_text()) if code == 0 else None, printed.out, printed.err


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_evaluate_with_masks_equals_a_hand_computation_and_boxes_and_points_equal_their_masks(
    squares: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import wtl

    by_masks, printed = evaluate(squares, tmp_path / "masks", "--masks", squares["masks"])
    scores = by_masks["methods"]["cam"]["last"]
    assert scores["pointing_counted"] == 24 and by_masks["ground_truth"] == f"masks from {squares['masks']}"
    assert "ground truth: masks from" in printed and "for 24 of the 24 explained pictures" in printed
    # By hand: the same maps (each picture's true class, as evaluate explains a non-malaria model) and masks.
    model = wtl.load_model(squares["model"])
    files = sorted(squares["data"].rglob("*.png"))
    labels = torch.tensor([model.class_names.index(f.parent.name) for f in files])
    heats = wtl.explain(model, files, "cam", class_index=labels).heatmap.numpy()
    masks = np.stack([read_mask(squares["masks"] / f.parent.name / f.name) for f in files])
    for key, value in hand_pointing(heats, masks).items():
        assert scores[key] == pytest.approx(value), key
    expected_mass = relevance_mass(torch.from_numpy(heats), torch.from_numpy(masks)).mean()
    assert scores["relevance_mass"] == pytest.approx(float(expected_mass))
    assert torch.equal(
        peak_distances(torch.from_numpy(heats), torch.from_numpy(masks)).isnan(), torch.zeros(24, dtype=torch.bool)
    )

    capsys.readouterr()
    _, by_boxes, _, _ = evaluate_here(capsys, squares, tmp_path / "boxes", "--boxes", squares["root"] / "boxes.csv")
    _, by_points, _, _ = evaluate_here(capsys, squares, tmp_path / "points", "--points", squares["root"] / "points.csv")
    _, by_dots, _, _ = evaluate_here(capsys, squares, tmp_path / "dots", "--masks", squares["dots"])
    figures = ("pointing_15px", "pointing_8px", "pointing_4px", "pointing_0px", "relevance_mass", "relevance_rank")
    for key in figures:
        assert by_boxes["methods"]["cam"]["last"][key] == pytest.approx(scores[key]), key
        assert by_points["methods"]["cam"]["last"][key] == pytest.approx(by_dots["methods"]["cam"]["last"][key]), key
    assert by_points["methods"]["cam"]["last"]["pointing_counted"] == 24


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_bad_ground_truth_answers_in_one_line(
    squares: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    masks = tmp_path / "masks"
    for path in sorted(squares["masks"].rglob("*.png"))[:20]:  # four pictures get no mask
        (masks / path.parent.name).mkdir(parents=True, exist_ok=True)
        (masks / path.parent.name / path.name).write_bytes(path.read_bytes())
    save(masks / "cyan" / "cyan_00.png", np.zeros((32, 32), dtype=np.uint8))  # an empty mask
    save(masks / "stray.png", np.full((32, 32), 255, dtype=np.uint8))  # matches no picture
    _, result, printed, _ = evaluate_here(capsys, squares, tmp_path / "out", "--masks", masks)
    assert "note: 4 of the 24 explained pictures have no mask" in printed
    assert "note: 1 of them have an empty mask at the model's input (e.g. cyan_00.png)" in printed
    assert "note: 1 masks match no picture of the evaluated images by file name (e.g. stray.png)" in printed
    assert result["methods"]["cam"]["last"]["pointing_counted"] == 24 - 4 - 1

    boxes = tmp_path / "boxes.csv"
    boxes.write_text("file,x0,y0,x1,y1\nyellow_00.png,-4,-4,10,10\nyellow_01.png,30,30,40,40\n")
    _, _, printed, _ = evaluate_here(capsys, squares, tmp_path / "out", "--boxes", boxes)
    assert "note: 2 boxes reached outside their picture and were clipped" in printed
    assert "note: 22 of the 24 explained pictures have no box" in printed

    for name, text, message in [
        ("columns.csv", "image,x,y\nyellow_00.png,1,2\n", "a points CSV needs the columns file,x,y"),
        ("nomatch.csv", "file,x,y\nsomething_else.png,1,2\n", "none of its 1 points matches a picture of the data"),
    ]:
        (tmp_path / name).write_text(text)
        code, _, _, err = evaluate_here(capsys, squares, tmp_path / "out", "--points", tmp_path / name)
        assert code == 2 and "Traceback" not in err
        (line,) = error_lines(err)
        assert message in line
