"""Shared fixtures: tiny synthetic data sets in the real Kaggle layouts, and a CLI runner.

Nothing here reads the real data in ../shared or writes into the repository's
models/, data/ or outputs/ folders: every data set and every output lives under a
pytest tmp_path.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw
from torch import nn

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

# The tests' networks see 16-32 pixel batches of a few images: a second intra-op thread
# buys nothing there, and on a busy machine two OpenMP threads that wait for each other
# made the same tests 5-10 times slower. The CLI subprocesses get the same setting.
torch.set_num_threads(1)
SUBPROCESS_THREADS = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}

# Patients C1..C40: crc32 puts C6, C20, C37, C40 in test and C9, C11, C30, C32 in val,
# the other 32 in train (see model_data.split_of_group), so every split gets images.
MALARIA_PATIENTS = range(1, 41)
MALARIA_SPLIT_PATIENTS = {"test": {6, 20, 37, 40}, "val": {9, 11, 30, 32}}
MALARIA_SPLIT_PATIENTS["train"] = set(MALARIA_PATIENTS) - MALARIA_SPLIT_PATIENTS["test"] - MALARIA_SPLIT_PATIENTS["val"]
MALARIA_CLASSES = ("Parasitized", "Uninfected")
GENDER_CLASSES = ("Female", "Male")
GENDER_SPLITS = {"Train": 10, "Validation": 4, "Test": 4}
FOLDER_CLASSES = ("circles", "squares", "stripes")


# --------------------------------------------------------------------------- images


def cell_image(rng: np.random.Generator, infected: bool, size: int = 48) -> Image.Image:
    """A pink disc on black with noise; an infected cell also has a dark purple blob."""
    canvas = Image.new("RGB", (size, size), (0, 0, 0))
    draw = ImageDraw.Draw(canvas)
    margin = int(rng.integers(2, 6))
    draw.ellipse([margin, margin, size - margin, size - margin], fill=(220, 150, 170))
    if infected:
        x, y = rng.integers(size // 4, size // 2, size=2)
        radius = size // 6
        draw.ellipse([x, y, x + radius, y + radius], fill=(70, 20, 90))
    pixels = np.asarray(canvas, dtype=np.int16) + rng.integers(-20, 21, size=(size, size, 3))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), mode="RGB")


def face_image(rng: np.random.Generator, label: int, size: int = 40) -> Image.Image:
    """Noise with a class-dependent feature: 'Male' (1) has a dark lower third."""
    pixels = rng.integers(90, 200, size=(size, size, 3)).astype(np.uint8)
    if label == 1:
        pixels[2 * size // 3 :] //= 4
    return Image.fromarray(pixels, mode="RGB")


def shape_image(rng: np.random.Generator, label: int, size: int = 36) -> Image.Image:
    """A circle, a square or stripes on noise, one per class."""
    pixels = rng.integers(0, 80, size=(size, size, 3)).astype(np.uint8)
    canvas = Image.fromarray(pixels, mode="RGB")
    draw = ImageDraw.Draw(canvas)
    if label == 0:
        draw.ellipse([6, 6, size - 6, size - 6], fill=(250, 240, 40))
    elif label == 1:
        draw.rectangle([8, 8, size - 8, size - 8], fill=(40, 240, 250))
    else:
        for x in range(0, size, 6):
            draw.rectangle([x, 0, x + 2, size], fill=(250, 40, 200))
    return canvas


# --------------------------------------------------------------------------- data sets


def build_malaria(root: Path, patients: Sequence[int] = MALARIA_PATIENTS, seed: int = 0) -> Path:
    """`root/cell_images/{Parasitized,Uninfected}/C{n}P{m}ThinF_IMG_..._cell_{k}.png` plus Thumbs.db junk.

    Every patient has 2 or 3 cells of each class, as a real slide has both. Returns
    the cell_images folder.
    """
    rng = np.random.default_rng(seed)
    cells = root / "cell_images"
    for name in MALARIA_CLASSES:
        folder = cells / name
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "Thumbs.db").write_bytes(b"\xd0\xcf\x11\xe0 not an image")
        for patient in patients:
            for k in range(2 + patient % 2):
                size = int(rng.integers(40, 64))
                image = cell_image(rng, name == "Parasitized", size)
                image.save(folder / f"C{patient}P{patient + 60}ThinF_IMG_20150918_144104_cell_{100 + k}.png")
    return cells


def build_gender(root: Path, seed: int = 0) -> Path:
    """`root/Dataset/{Train,Validation,Test}/{Female,Male}/*.jpg`; returns the Dataset folder."""
    rng = np.random.default_rng(seed)
    dataset = root / "Dataset"
    for split, count in GENDER_SPLITS.items():
        for label, name in enumerate(GENDER_CLASSES):
            folder = dataset / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                face_image(rng, label).save(folder / f"{split.lower()}_{name.lower()}_{i:03d}.jpg", quality=90)
    return dataset


def build_folder(root: Path, per_class: int = 24, seed: int = 0) -> Path:
    """`root/shapes3/{circles,squares,stripes}/*.png` (no train/val/test sub-folders); returns shapes3."""
    rng = np.random.default_rng(seed)
    base = root / "shapes3"
    for label, name in enumerate(FOLDER_CLASSES):
        folder = base / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            shape_image(rng, label).save(folder / f"{name}_{i:03d}.png")
    return base


@pytest.fixture(scope="session")
def malaria_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Read-only shared malaria set: the folder that holds cell_images/ (do not modify)."""
    root = tmp_path_factory.mktemp("malaria")
    build_malaria(root)
    return root


@pytest.fixture(scope="session")
def gender_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Read-only shared gender set: the folder that holds Dataset/ (do not modify)."""
    root = tmp_path_factory.mktemp("gender")
    build_gender(root)
    return root


@pytest.fixture(scope="session")
def folder_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Read-only shared 3-class folder set: the class-folder parent itself (do not modify)."""
    return build_folder(tmp_path_factory.mktemp("folder"))


@pytest.fixture
def own_malaria(tmp_path: Path) -> Path:
    """A private malaria set a test may damage; the folder that holds cell_images/."""
    root = tmp_path / "own_malaria"
    build_malaria(root, patients=range(1, 21))
    return root


# --------------------------------------------------------------------------- CLI


def run_cli(
    *args: str | Path,
    input: str | None = None,
    timeout: float = 480,
    script: str = "model_main.py",
    cwd: Path = REPO,
) -> subprocess.CompletedProcess[str]:
    """Run a CLI of the project as a real subprocess from the repository root.

    stdin is empty (end of input at once) unless `input` is given, so a prompt
    nobody expected ends the run instead of hanging it.
    """
    env = dict(os.environ, MPLBACKEND="Agg", PYTHONUNBUFFERED="1", **SUBPROCESS_THREADS)
    command = [sys.executable, script, *map(str, args)]
    return subprocess.run(
        command,
        cwd=cwd,
        env=env,
        input=input if input is not None else "",
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def randomise_batch_norm(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial running statistics and affine parameters, so eval-mode BN is not the identity."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                n = module.num_features
                module.running_mean.copy_(torch.rand(n, generator=generator) - 0.5)
                module.running_var.copy_(torch.rand(n, generator=generator) * 1.5 + 0.5)
                module.weight.copy_(torch.rand(n, generator=generator) + 0.5)
                module.bias.copy_(torch.rand(n, generator=generator) * 0.4 - 0.2)
    return model


def throwaway_clone(dest: Path, leave_out: Sequence[str] = ()) -> Path:
    """The repository's tracked files as they are now, committed into a fresh git repository at `dest`.

    What a user gets from `git clone` (and what CI runs on), without touching this checkout;
    paths starting with an entry of `leave_out` are not copied (a clone whose bundled weights are gone).
    """
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout
    for name in filter(None, tracked.decode().split("\0")):
        source = REPO / name
        if source.is_file() and not any(name.startswith(prefix) for prefix in leave_out):
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / name)
    identity = ["-c", "user.name=test", "-c", "user.email=test@example.org"]
    for command in (["init", "-q"], ["add", "-A"], [*identity, "commit", "-qm", "clone"]):
        subprocess.run(["git", *command], cwd=dest, check=True, capture_output=True)
    return dest


def git_status(clone: Path) -> str:
    """`git status --porcelain` of a clone: empty when nothing tracked changed and nothing new is unignored."""
    return subprocess.run(
        ["git", "status", "--porcelain"], cwd=clone, capture_output=True, text=True, check=True
    ).stdout


@pytest.fixture
def cli():
    """The run_cli helper as a fixture."""
    return run_cli


def error_lines(stderr: str) -> list[str]:
    """The lines of stderr that the CLIs' one-line error reports start with."""
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Start the README's shards first, dealt round the xdist workers: each is one long test.

    The work-stealing scheduler hands worker k the k-th contiguous run of the collection, and a
    worker can only be robbed of tests it has not started; so the shards go to the front of the
    runs, one worker after the other, and a shard never starts last and runs alone at the end.
    """
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    shards = [item for item in items if "test_every_readme_command_runs_on_a_fresh_clone" in item.nodeid]
    rest = [item for item in items if item not in shards]
    runs: list[list[pytest.Item]] = [shards[k::workers] for k in range(workers)]
    left = len(items)
    for k, run in enumerate(runs):  # the scheduler's run sizes: what is left, split evenly
        size = left // (workers - k)
        left -= size
        take = max(0, size - len(run))
        run.extend(rest[:take])
        del rest[:take]
    items[:] = [item for run in runs for item in run] + rest
