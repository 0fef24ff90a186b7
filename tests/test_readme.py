"""Every command line of README.md and models/bundled/README.md runs as printed, on a fresh clone.

The lines come from the READMEs' ```bash blocks, in order, with generated data in place of
the placeholders (DATA: cells in the Kaggle layout, MY_CELLS: a few patients' cells, FACES:
faces in the Kaggle layout, cell.png, cells/, face.jpg, my_resnet18.pt: a plain torchvision
state dict, MY_MASKS and my_boxes.csv: masks and boxes of MY_CELLS' Parasitized cells). `make`
lines are left out: `make test` is what CI runs around this very test, `make demo` is
`python where_to_look.py demo` plus the install, and `make benchmark` times the machine. Each
line runs in the clone's root with empty stdin (a question would end the run), must exit 0,
and at the end `git status --porcelain` of the clone must be empty: no command writes into
the repository's tracked files. The blocks fall into independent shards (each group of trainings that
share a model folder with what reads their output, and the rest dealt round three more), each on its
own clone, so that pytest-xdist runs them side by side; conftest.py starts them first.
"""

from __future__ import annotations

import functools
import http.server
import os
import re
import shlex
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import REPO, build_gender, build_malaria, cell_image, face_image, git_status, throwaway_clone
from PIL import Image

from wtl.data.images import load_image
from wtl.metrics.stain import stain_mask
from wtl.nets import zoo

READMES = (REPO / "README.md", REPO / "models" / "bundled" / "README.md")
BLOCK = re.compile(r"```bash\n(.*?)```", re.DOTALL)


def command_blocks(readme: Path) -> list[list[str]]:
    """The commands of each of a README's bash blocks: comments dropped, continuation lines joined, make left out."""
    blocks = []
    for block in BLOCK.findall(readme.read_text()):
        lines = []
        for line in block.replace("\\\n", " ").splitlines():
            command = line.split(" #", 1)[0].strip()
            if command and not command.startswith(("#", "make ")):
                lines.append(command)
        if lines:
            blocks.append(lines)
    return blocks


def command_lines(readme: Path) -> list[str]:
    """Every command of a README's bash blocks, in order."""
    return [line for block in command_blocks(readme) for line in block]


# A block that trains, or reads what a training wrote (runs/, run1/, run2/), goes with the trainings;
# the other blocks need only the bundled models and are dealt round the view shards by their length.
TRAINS = re.compile(r"model_main\.py|torchrun|\bruns?\d*/")
VIEW_SHARDS = 3
# The folders a training block writes or reads: --models-dir X, a checkpoint path under runs/ or run1/,
# and models/ for a training without --models-dir. Blocks that share one are a group; every group is a
# shard of its own, since a shard's clone sees only what its own blocks wrote.
MODELS_DIR = re.compile(r"--models-dir\s+(\S+)")
RUN_PATH = re.compile(r"(?<![\w/.-])(runs/[\w.-]+|runs?\d*)/[\w.-]+\.pt\b")


def folders(block: list[str]) -> set[str]:
    """The model folders a training block's lines write or read."""
    found = set()
    for line in block:
        found |= {m.rstrip("/") for m in MODELS_DIR.findall(line)} | set(RUN_PATH.findall(line))
        if "model_main.py" in line and "--models-dir" not in line:
            found.add("models")
    return found


def training_groups(blocks: list[tuple[Path, list[str]]]) -> list[list[tuple[Path, list[str]]]]:
    """The training blocks in groups, blocks that share a model folder in one group; in README order."""
    groups: list[tuple[set[str], list[int]]] = []  # (folders, indices of the blocks)
    for index, (_, block) in enumerate(blocks):
        keys = folders(block)
        joined = [group for group in groups if group[0] & keys]
        groups = [group for group in groups if not group[0] & keys]
        groups.append((keys.union(*(k for k, _ in joined)), sorted([index, *(i for _, m in joined for i in m)])))
    return [[blocks[i] for i in members] for _, members in sorted(groups, key=lambda group: group[1][0])]


def shards() -> dict[str, list[tuple[Path, list[str]]]]:
    """The READMEs' blocks in independent groups, each run on its own clone: 'train-1'... and 'views-1'...; in order."""
    trainings: list[tuple[Path, list[str]]] = []
    views: dict[str, list[tuple[Path, list[str]]]] = {f"views-{k + 1}": [] for k in range(VIEW_SHARDS)}
    load = [0] * VIEW_SHARDS
    for readme in READMES:
        for block in command_blocks(readme):
            if any(TRAINS.search(line) for line in block):
                trainings.append((readme, block))
            else:
                lightest = load.index(min(load))
                views[f"views-{lightest + 1}"].append((readme, block))
                load[lightest] += len(block)
    return {f"train-{k + 1}": group for k, group in enumerate(training_groups(trainings))} | views


def test_the_shards_hold_every_block_once() -> None:
    dealt = [line for shard in shards().values() for _, block in shard for line in block]
    every = [line for readme in READMES for line in command_lines(readme)]
    assert sorted(dealt) == sorted(every) and len(every) >= 20
    assert all(shards().values())
    # What a block reads was trained in its own shard: no two training shards share a model folder.
    trained = [
        set().union(*(folders(block) for _, block in shard)) for name, shard in shards().items() if "train" in name
    ]
    assert len(trained) >= 3 and all(not (a & b) for i, a in enumerate(trained) for b in trained[i + 1 :])
    assert folders(["python where_to_look.py single --model runs/resnet18/model_malaria_resnet18.best.pt"]) == {
        "runs/resnet18"
    }


def test_the_readmes_have_commands_and_every_one_parses() -> None:
    """Every line is a command of this project with flags its parser knows (checked without running it)."""
    sys.path.insert(0, str(REPO))
    import model_main
    import where_to_look

    for readme in READMES:
        lines = command_lines(readme)
        assert lines, f"{readme} has no commands"
        for line in lines:
            words = shlex.split(line.split("|")[-1])
            while words and words[0] in ("python", "torchrun") or (words and words[0].startswith("--")):
                words.pop(0)
            script, arguments = words[0], words[1:]
            assert script in ("model_main.py", "where_to_look.py") or script.startswith("benchmarks/"), line
            if script == "model_main.py":
                model_main.parse_args(arguments)
            elif script == "where_to_look.py":
                where_to_look.parse_args(arguments)


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the base class's name
        pass


@pytest.fixture
def served_checkpoint(tmp_path: Path):
    """A local HTTP server holding a real checkpoint, as the published weights would be: WTL_WEIGHTS_URL."""
    folder = tmp_path / "served"
    folder.mkdir()
    shutil.copy(REPO / "models" / "bundled" / "model_malaria_last.pt", folder / "model_malaria_last.pt")
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(folder)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/model_malaria_last.pt"
    finally:
        server.shutdown()
        server.server_close()


def placeholders(root: Path) -> dict[str, str]:
    """Generated data for every placeholder the READMEs use."""
    rng = np.random.default_rng(0)
    data = build_malaria(root / "malaria", patients=[*range(1, 17), 20])  # test: C6, C20; val: C9, C11
    my_cells = root / "my_cells"
    for offset, name in ((0, "Parasitized"), (100, "Uninfected")):
        (my_cells / name).mkdir(parents=True)
        for patient in range(1, 4):
            for k in range(10):
                image = cell_image(rng, name == "Parasitized", 48)
                image.save(my_cells / name / f"C{patient + offset}P{patient}ThinF_IMG_1_cell_{k}.png")
    faces = root / "faces"
    build_gender(faces)
    cells = root / "cells"
    cells.mkdir()
    for k in range(3):
        cell_image(rng, k % 2 == 0, 52).save(cells / f"cell_{k}.png")
    face_image(rng, 1, 60).save(root / "face.jpg")
    masks, boxes = own_ground_truth(my_cells, root)
    weights = root / "my_resnet18.pt"
    torch.save(zoo.build("resnet18", 2).net.state_dict(), weights)  # a plain torchvision state dict
    return {
        "my_resnet18.pt": str(weights),
        "MY_MASKS": str(masks),
        "my_boxes.csv": str(boxes),
        "MY_CELLS": str(my_cells),
        "DATA": str(data),
        "FACES": str(faces),
        "cell.png": str(cells / "cell_0.png"),
        "cells/": str(cells) + "/",
        "face.jpg": str(root / "face.jpg"),
    }


def own_ground_truth(cells: Path, root: Path) -> tuple[Path, Path]:
    """A mask (the stain's, at the cell's own size) and the box around it for every Parasitized cell of `cells`."""
    masks, rows = root / "my_masks", ["file,x0,y0,x1,y1"]
    for path in sorted((cells / "Parasitized").glob("*.png")):
        with Image.open(path) as picture:
            size = picture.width
        mask = stain_mask(load_image(path, size)).numpy()
        (masks / "Parasitized").mkdir(parents=True, exist_ok=True)
        Image.fromarray(mask.astype(np.uint8) * 255).save(masks / "Parasitized" / path.name)
        if mask.any():
            ys, xs = np.nonzero(mask)
            rows.append(f"{path.name},{xs.min()},{ys.min()},{xs.max() + 1},{ys.max() + 1}")
    (root / "my_boxes.csv").write_text("\n".join(rows) + "\n")
    return masks, root / "my_boxes.csv"


def substitute(line: str, values: dict[str, str]) -> str:
    """The line with each placeholder (a whole word) replaced by its generated path."""
    for key, value in values.items():
        line = re.sub(rf"(?<![\w/.-]){re.escape(key)}(?![\w])", value, line)
    return line


@pytest.mark.slow
@pytest.mark.timeout(3600)
@pytest.mark.parametrize("shard", list(shards()))
def test_every_readme_command_runs_on_a_fresh_clone(tmp_path: Path, served_checkpoint: str, shard: str) -> None:
    clone = throwaway_clone(tmp_path / "clone")
    values = placeholders(tmp_path / "data")
    env = dict(
        os.environ,
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        MPLBACKEND="Agg",
        OMP_NUM_THREADS="1",
        WTL_WEIGHTS_URL=served_checkpoint,  # `download` fetches from here instead of Google Drive
    )
    for readme, block in shards()[shard]:
        for line in block:
            command = substitute(line, values)
            result = subprocess.run(
                ["bash", "-c", command], cwd=clone, env=env, input="", capture_output=True, text=True, timeout=1800
            )
            assert result.returncode == 0, (
                f"{readme.name}: {line}\nexit {result.returncode}\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}"
            )
            assert "Traceback" not in result.stderr, line
    assert git_status(clone) == "", "a README command changed the repository's tracked files"
