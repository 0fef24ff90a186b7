"""The visualizer's questions, in the original project's order, for whatever no flag answered.

download the models if none are found -> Gender (A), Malaria (B) or other features (C) -> your own
picture or the demo pictures -> for malaria: last layer or every layer -> for every layer: the
model trained with last-layer or every-layer loss. Each answer has a flag; at end of input a
question ends the run with one line naming it.
"""

from __future__ import annotations

import argparse
import os
import urllib.parse
from collections.abc import Callable
from pathlib import Path

from wtl import resources
from wtl.cli.prompts import ask
from wtl.errors import CheckpointError

PUBLISHED = "Google Drive folder of the original project"
CommandArgs = Callable[..., argparse.Namespace]  # main.command_args: a command's namespace from flags and answers


def download_source(given: argparse.Namespace) -> str:
    """Where a download would come from, in words: the published Drive folder or the host of the URL."""
    from wtl.checkpoints.download import WEIGHTS_URL_ENV

    url = getattr(given, "weights_url", None) or os.environ.get(WEIGHTS_URL_ENV)
    if not url:
        return f"the {PUBLISHED}"
    host = urllib.parse.urlparse(url).hostname or url
    return f"{host} ({'--weights-url' if getattr(given, 'weights_url', None) else WEIGHTS_URL_ENV})"


def ensure_models(given: argparse.Namespace, read: Callable[[str], str]) -> None:
    """The original first question: offer the download when no checkpoint is found at all."""
    from wtl.checkpoints.finding import find_checkpoints, model_folders

    models_dir = getattr(given, "models_dir", resources.default_models_dir())
    if getattr(given, "model", None) or find_checkpoints(model_folders(models_dir)):
        return
    answer = ask(
        f"No trained models found. Download the pretrained models from {download_source(given)}?",
        "'download' or --model PATH",
        ["Y", "N"],
        read=read,
    )
    if answer == "N":
        raise CheckpointError("no models: train one with model_main.py, or pass --model PATH")
    from wtl.checkpoints.download import download_weights

    download_weights(getattr(given, "weights_url", None), models_dir)


def _again(problem: str | None) -> str | None:
    return None if problem is None else f"{problem}; please try again."


def _data_set(dataset: str, answer: str) -> str | None:
    """Why the answer is not a folder of the data set's layout (data.checks), or None."""
    from wtl.data.checks import data_set_problem

    return _again(data_set_problem(dataset, answer))


def _file(answer: str) -> str | None:
    """Why the answer is neither an image file nor a folder of them, or None."""
    from wtl.data.checks import picture_problem

    return _again(picture_problem(answer))


def _gender_folder(answer: str) -> str | None:
    if not answer:
        return "No faces ship with the tool (CelebA's photos may not be passed on): type the data set's folder."
    return _data_set("gender", answer)


def _malaria_folder(answer: str) -> str | None:
    return None if not answer else _data_set("malaria", answer)


def _gender100_result(gender: str) -> Callable[[str], str | None]:
    """The overlay prompt's check: a Gender100 result of that gender (its npz, or the PNG beside it)."""

    def check(answer: str) -> str | None:
        import numpy as np

        path = Path(answer).expanduser()
        npz = path.with_suffix(".npz")
        if path.suffix.lower() not in (".npz", ".png"):
            return f"{answer}: expected gender100's .npz (or the .png beside it); please try again."
        if not npz.is_file():
            return f"{answer}: no {npz.name} (what gender100 writes); please try again."
        try:
            with np.load(npz) as data:
                keys = set(data.files)
                saved = str(data["gender"]) if "gender" in keys else None
        except (OSError, ValueError, EOFError) as error:
            return f"{npz}: not readable ({error}); please try again."
        if {"heatmap_male", "heatmap_female"} <= keys or saved == gender:
            return None
        what = f"the {saved} map" if saved else "not a Gender100 result"
        return f"{npz.name}: {what}, not the {gender.lower()} one; please try again."

    return check


def complete_with_prompts(
    given: argparse.Namespace, command_args: CommandArgs, read: Callable[[str], str] = input
) -> argparse.Namespace:
    """Ask, in the original order, for the command and whatever it still needs; returns that command's flags."""
    ensure_models(given, read)
    answers: dict[str, object] = {}
    letter = ask(
        "Gender (A), Malaria (B), or other features (C: Gender100 / OverlayMaleFemale / what the network looks for)?",
        "a command: single, multi, gender100, overlay or features",
        ["A", "B", "C"],
        read=read,
    )
    if letter == "C":
        other = ask(
            "Gender100 (A), OverlayMaleFemale (B), or what the network looks for (C: features)?",
            "gender100, overlay or features",
            ["A", "B", "C"],
            read=read,
        )
        command = {"A": "gender100", "B": "overlay", "C": "features"}[other]
        if command == "gender100" and getattr(given, "data_dir", None) is None:
            question = "Path to the gender data set (the Dataset/ folder or its parent):"
            answers["data_dir"] = Path(ask(question, "--data-dir PATH", check=_gender_folder, read=read)).expanduser()
        if command == "overlay" and getattr(given, "image", None) is None:
            answers["image"] = [
                Path(
                    ask(
                        f"Path of the saved {gender} Gender100 result ({name}):",
                        "--image",
                        check=_gender100_result(gender.capitalize()),
                        read=read,
                    )
                ).expanduser()
                for gender, name in (("male", "gender100_male.npz or .png"), ("female", "gender100_female.npz or .png"))
            ]
        return command_args(command, given, **answers)
    dataset = "gender" if letter == "A" else "malaria"
    answers["dataset"] = dataset
    own = ask("Your own picture (A) or the demo pictures (B)?", "--image PATH", ["A", "B"], read=read) == "A"
    if own and getattr(given, "image", None) is None:
        question = "Path of your picture (or a folder of pictures):"
        answers["image"] = [Path(ask(question, "--image PATH", check=_file, read=read)).expanduser()]
    command = "single"
    if dataset == "malaria":
        question = "Heatmap of the last conv layer only (A) or of every layer (B)?"
        if ask(question, "single or multi", ["A", "B"], read=read) == "B":
            command = "multi"
            if getattr(given, "loss", None) is None:
                question = "The model trained with last-layer loss (A) or with every-layer loss (B)?"
                loss = ask(question, "--loss {last,every}", ["A", "B"], read=read)
                answers["loss"] = "last" if loss == "A" else "every"
    if not own:
        answers.update(_demo_answers(given, dataset, read))
    return command_args(command, given, **answers)


def _demo_answers(given: argparse.Namespace, dataset: str, read: Callable[[str], str]) -> dict[str, object]:
    """Where the demo pictures come from: the bundled cells, or the test split of a data set."""
    data_dir = getattr(given, "data_dir", None)
    if dataset == "gender":
        if data_dir is None:
            question = "Path to the gender data set (the Dataset/ folder or its parent):"
            data_dir = Path(ask(question, "--data-dir PATH", check=_gender_folder, read=read)).expanduser()
        return {"demo_pictures": "manifest", "data_dir": data_dir}
    if data_dir is None:
        answer = ask(
            "Path to the malaria data set (press Enter for the bundled demo cells):",
            "--data-dir PATH",
            check=_malaria_folder,
            read=read,
        )
        if not answer:
            return {"demo_pictures": "bundled"}
        data_dir = Path(answer).expanduser()
    return {"demo_pictures": "manifest", "data_dir": data_dir}
