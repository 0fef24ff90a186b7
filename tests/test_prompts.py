"""Every path prompt of both tools checks the layout it needs at once, and asks again with the reason."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from wtl.cli import asking, train
from wtl.cli import main as where_to_look
from wtl.data.checks import data_set_problem, picture_problem
from wtl.errors import NoAnswer

REPO = Path(__file__).resolve().parents[1]
CELL = next((REPO / "data" / "demo" / "Parasitized").glob("*.png"))


def scripted(*answers: str | Path) -> tuple[Callable[[str], str], list[str]]:
    """A `read` that gives the answers in turn (then end of input), and the questions it was asked."""
    asked: list[str] = []
    queue: Iterator[str | Path] = iter(answers)

    def read(question: str) -> str:
        asked.append(question)
        try:
            return str(next(queue))
        except StopIteration:
            raise EOFError from None

    return read, asked


@pytest.fixture
def pets(tmp_path: Path) -> Path:
    """A folder that exists but is laid out for another task: cat/ and dog/."""
    for name in ("cat", "dog"):
        (tmp_path / "pets" / name).mkdir(parents=True)
        for picture in ("a.png", "b.png"):
            (tmp_path / "pets" / name / picture).write_bytes(CELL.read_bytes())
    return tmp_path / "pets"


def test_layout_problems_name_what_is_missing(pets: Path, malaria_root: Path, gender_root: Path) -> None:
    assert "Parasitized/" in (data_set_problem("malaria", pets) or "")
    assert "Dataset/Train/Female" in (data_set_problem("gender", pets) or "")
    assert data_set_problem("folder", pets) is None  # two class folders are a folder data set
    assert data_set_problem("malaria", malaria_root) is None and data_set_problem("gender", gender_root) is None
    assert "no such folder" in (data_set_problem("malaria", pets / "nothing") or "")
    empty = pets.parent / "empty_cells"
    for name in ("Parasitized", "Uninfected"):
        (empty / name).mkdir(parents=True)
    assert "no images" in (data_set_problem("malaria", empty) or "")
    assert picture_problem(CELL) is None and picture_problem(CELL.parent) is None
    (pets.parent / "notes.txt").write_text("not a picture")
    assert "not an image file" in (picture_problem(pets.parent / "notes.txt") or "")
    assert "holds no image files" in (picture_problem(empty / "Uninfected") or "")


def test_model_main_asks_again_for_a_folder_of_the_wrong_layout(
    pets: Path, malaria_root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    read, asked = scripted("M", pets, malaria_root, "L")
    args = train.complete_with_prompts(train.parse_args(["--epochs", "1"]), read=read)
    assert args.data_dir == malaria_root and args.network == "last"
    assert sum("Path to the malaria data set" in q for q in asked) == 2
    out = capsys.readouterr().out
    assert f"{pets}: expected the folders Uninfected/, Parasitized/" in out and "please try again" in out
    # At end of input the prompt still names the flag instead of hanging.
    read, _ = scripted("G", pets)
    with pytest.raises(NoAnswer, match="--data-dir"):
        train.complete_with_prompts(train.parse_args([]), read=read)


def test_where_to_look_asks_again_for_a_picture_that_is_none(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "notes.txt").write_text("not a picture")
    read, asked = scripted("B", "A", tmp_path / "notes.txt", CELL, "A")
    args = asking.complete_with_prompts(where_to_look.parse_args([]), where_to_look.command_args, read=read)
    assert args.command == "single" and args.image == [CELL]
    assert sum("Path of your picture" in q for q in asked) == 2
    assert "notes.txt: not an image file" in capsys.readouterr().out


def test_where_to_look_checks_the_data_sets_at_once(
    pets: Path, malaria_root: Path, gender_root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Malaria demo pictures from a data set: a folder of pets is refused before anything runs.
    read, asked = scripted("B", "B", "A", pets, malaria_root)
    args = asking.complete_with_prompts(where_to_look.parse_args([]), where_to_look.command_args, read=read)
    assert args.data_dir == malaria_root and args.demo_pictures == "manifest"
    assert sum("Path to the malaria data set" in q for q in asked) == 2
    assert "expected the folders Uninfected/, Parasitized/" in capsys.readouterr().out
    # Gender100: the cells are not faces.
    read, asked = scripted("C", "A", malaria_root, gender_root)
    args = asking.complete_with_prompts(where_to_look.parse_args([]), where_to_look.command_args, read=read)
    assert args.command == "gender100" and args.data_dir == gender_root
    assert "expected Dataset/Train/Female/" in capsys.readouterr().out


def test_the_overlay_prompt_wants_that_genders_result(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for gender in ("Male", "Female"):
        np.savez(tmp_path / f"gender100_{gender.lower()}.npz", gender=gender, heatmap=np.zeros((4, 4)))
    (tmp_path / "gender100_male.png").write_bytes(b"")
    male, female = tmp_path / "gender100_male.png", tmp_path / "gender100_female.npz"
    read, asked = scripted("C", "B", female, CELL, male, female)
    args = asking.complete_with_prompts(where_to_look.parse_args([]), where_to_look.command_args, read=read)
    assert args.command == "overlay" and args.image == [male, female]
    out = capsys.readouterr().out
    assert "gender100_female.npz: the Female map, not the male one" in out
    assert f"{CELL.name}: no {CELL.stem}.npz" in out
    assert sum("male Gender100 result" in q and "female" not in q for q in asked) == 3
