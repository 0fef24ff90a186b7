"""where_to_look.py end to end: real checkpoints from the real trainer, the CLI as a real subprocess.

The checkpoints are trained once per module by `model_main.py` on conftest's tiny
synthetic data sets (32x32 input, one epoch). Every number the CLI saves with
--save-npz is checked against an independent computation here: the checkpoint
loaded with torch.load(weights_only=True), the network run by hand, the CAM
summed channel by channel (not through cams.py).
"""

from __future__ import annotations

import functools
import http.server
import inspect
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import build_malaria, git_status, throwaway_clone
from PIL import Image

import where_to_look
from model_data import GenderSet, list_images, load_image
from model_network import Network, NetworkMultiLoss
from wtl.checkpoints.loading import load_model
from wtl.maps import fusion, registry
from wtl.maps.explain import explain
from wtl.plot import draw as draw_module

REPO = Path(__file__).resolve().parents[1]
SIZE = 32
# The CLI and the hand computation agree to ~1e-9 here; the trained models' logits and CAMs are small
# (~0.02, a CAM spans ~1e-3), so an absolute 1e-4 would hide real errors: compare tightly.
NUMBERS = {"rtol": 1e-5, "atol": 1e-6}
# Heatmaps are min-max normalised over that small span, which magnifies float noise (seen: ~4e-6).
HEAT_ATOL = 1e-4

# Generous limits: the module fixture trains three models inside the first test's setup, and on a
# busy machine one CLI run (mostly importing torch) has taken minutes. They only catch hangs.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]
CLI_TIMEOUT = 600
# One thread per subprocess: several run side by side, and oversubscribed OpenMP threads crawl.
LIGHT_ENV = {"MPLBACKEND": "Agg", "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


# --------------------------------------------------------------------------- running the CLIs


def wtl(
    *args: str | Path,
    cwd: Path,
    input: str = "",
    env: dict[str, str] | None = None,
    drop_env: Sequence[str] = (),
    timeout: float = CLI_TIMEOUT,
    repo: Path = REPO,
) -> subprocess.CompletedProcess[str]:
    """Run where_to_look.py (of this checkout, or of a clone) as a subprocess (headless matplotlib, stdin given)."""
    environment = dict(os.environ, **LIGHT_ENV)
    environment.pop("WTL_WEIGHTS_URL", None)
    for name in drop_env:
        environment.pop(name, None)
    environment.update(env or {})
    return subprocess.run(
        [sys.executable, str(repo / "where_to_look.py"), *map(str, args)],
        cwd=cwd,  # a temporary folder: nothing relative can land in the repository
        env=environment,
        input=input,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def ok(result: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert result.returncode == 0, (
        f"exit {result.returncode}\nstdout:\n{result.stdout[-3000:]}\nstderr:\n{result.stderr[-3000:]}"
    )
    assert "Traceback" not in result.stderr
    return result


def one_line_error(result: subprocess.CompletedProcess[str], strict: bool = True) -> str:
    """Exit 2 and a one-line 'error:' report, no traceback; returns that line.

    strict: stderr holds nothing but that line (a download's retry notes are allowed otherwise).
    """
    assert result.returncode == 2, (
        f"exit {result.returncode}\nstdout:\n{result.stdout[-2000:]}\nstderr:\n{result.stderr[-3000:]}"
    )
    assert "Traceback" not in result.stderr and "Traceback" not in result.stdout
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1, result.stderr
    if strict:
        assert lines == errors, f"stderr has more than the error line:\n{result.stderr}"
    return errors[0]


def pngs(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.png")) if folder.is_dir() else []


def check_png(path: Path, min_side: int = 100) -> tuple[int, int]:
    """A real PNG that PIL can decode, of a sensible size; returns (width, height)."""
    assert path.is_file(), path
    with Image.open(path) as image:
        assert image.format == "PNG"
        image.verify()
    with Image.open(path) as image:
        image.load()
        width, height = image.size
    assert min_side <= width <= 5000 and min_side <= height <= 5000, (path, image.size)
    return width, height


# --------------------------------------------------------------------------- independent reference


def load_reference(checkpoint: Path) -> tuple[torch.nn.Module, dict]:
    """The checkpoint's network, built and loaded here without weights.py."""
    content = torch.load(checkpoint, map_location="cpu", weights_only=True)
    state = content["net_state_dict"]
    classes = state["classifier.2.weight"].shape[0]
    network = NetworkMultiLoss(classes) if "transform1.weight" in state else Network(classes)
    network.load_state_dict(state, strict=True)
    return network.eval(), content


def loop_cam(features: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """sum_k w[k] * A[k] for one image's (K, h, w) features, one channel at a time."""
    cam = torch.zeros(features.shape[1:], dtype=torch.float64)
    for k in range(features.shape[0]):
        cam += float(weights[k]) * features[k].double()
    return cam


def minmax_heatmap(cam: torch.Tensor, size: int) -> np.ndarray:
    up = F.interpolate(cam[None, None].float(), size=(size, size), mode="bilinear", align_corners=False)[0, 0]
    up = up.double()
    return ((up - up.min()) / (up.max() - up.min())).numpy()


@torch.no_grad()
def reference_single(checkpoint: Path, image: Path, class_index: int | None = None) -> dict[str, np.ndarray | int]:
    """Logits, explained class, raw CAM and heatmap of a last-block Network, computed by hand."""
    network, content = load_reference(checkpoint)
    assert content["image_size"] == SIZE
    x = load_image(image, SIZE)[None]
    features = network.features(x)[0]  # (256, 2, 2)
    linear = network.classifier[2]
    logits = features.mean(dim=(1, 2)) @ linear.weight.T + linear.bias
    torch.testing.assert_close(logits, network(x)[0])  # the hand-made head is the network's head
    shown = int(logits.argmax()) if class_index is None else class_index
    cam = loop_cam(features, linear.weight[shown])
    return {"logits": logits.numpy(), "class_index": shown, "cam": cam.numpy(), "heatmap": minmax_heatmap(cam, SIZE)}


def check_single_npz(npz_path: Path, checkpoint: Path, image: Path, class_index: int | None = None) -> dict:
    """The CLI's saved numbers equal the independent computation; returns the npz contents."""
    with np.load(npz_path) as npz:
        data = {key: npz[key] for key in npz.files}
    for key in ("logits", "class_index", "cam", "heatmap", "image"):
        assert key in data, f"{npz_path} lacks {key}: {sorted(data)}"
    assert str(data["image"]) == str(image)  # the numbers of this picture, not of one with the same name
    expected = reference_single(checkpoint, image, class_index)
    assert int(data["class_index"]) == expected["class_index"]
    np.testing.assert_allclose(data["logits"], expected["logits"], **NUMBERS)
    assert data["cam"].shape == (SIZE // 16, SIZE // 16)
    np.testing.assert_allclose(data["cam"], expected["cam"], **NUMBERS)
    assert data["heatmap"].shape == (SIZE, SIZE)
    np.testing.assert_allclose(data["heatmap"], expected["heatmap"], atol=HEAT_ATOL, rtol=0)
    assert data["heatmap"].min() >= 0.0 and data["heatmap"].max() <= 1.0
    return data


# --------------------------------------------------------------------------- fixtures


TRAIN_COMMON = ("--image-size", str(SIZE), "--epochs", "1", "--workers", "0", "--batch-size", "8", "--device", "cpu")
TRAIN_MAX_PER_CLASS = ("--max-per-class", "24")  # enough for real weights, light enough for a test


@pytest.fixture(scope="module")
def trained(malaria_root: Path, gender_root: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Real checkpoints from model_main.py: malaria last, malaria every + every loss, gender last."""
    models = tmp_path_factory.mktemp("wtl_models")
    manifests = tmp_path_factory.mktemp("wtl_manifests")
    jobs = {
        "malaria_last": ["--dataset", "malaria", "--data-dir", malaria_root, "--network", "last"],
        "malaria_every": ["--dataset", "malaria", "--data-dir", malaria_root, "--network", "every", "--loss", "every"],
        "gender_last": ["--dataset", "gender", "--data-dir", gender_root, "--network", "last"],
    }
    env = dict(os.environ, **LIGHT_ENV)
    logs = models / "logs"
    logs.mkdir()
    processes = {}
    try:
        for name, flags in jobs.items():
            with open(logs / f"{name}.log", "w") as log:  # a file, not a pipe nobody reads meanwhile
                processes[name] = subprocess.Popen(
                    [sys.executable, str(REPO / "model_main.py"), *map(str, flags), *TRAIN_COMMON, *TRAIN_MAX_PER_CLASS]
                    + ["--models-dir", str(models), "--manifest-dir", str(manifests)],
                    cwd=models,
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
        for name, process in processes.items():
            process.wait(timeout=1500)
            assert process.returncode == 0, f"training {name} failed:\n{(logs / f'{name}.log').read_text()[-3000:]}"
    finally:
        for process in processes.values():
            if process.poll() is None:
                process.kill()
                process.wait()
    paths = {
        "malaria_last": models / "model_malaria_last.best.pt",
        "malaria_last_resume": models / "model_malaria_last.pt",
        "malaria_every": models / "model_malaria_every_multi_loss.best.pt",
        "gender_last": models / "model_gender_last.best.pt",
    }
    for path in paths.values():
        assert path.is_file(), f"the trainer did not write {path}"
    return paths


@pytest.fixture(scope="module")
def cells(malaria_root: Path) -> dict[str, list[Path]]:
    """The generated cells by class. conftest names them alike in both folders: Parasitized[i] and
    Uninfected[i] share a file name (and so an output name), so tests mix different indices."""
    base = malaria_root / "cell_images"
    found = {name: list_images(base / name) for name in ("Parasitized", "Uninfected")}
    assert [p.name for p in found["Parasitized"]] == [p.name for p in found["Uninfected"]]
    return found


@pytest.fixture(scope="module")
def named_models(trained: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A models folder with the trained checkpoints under the names the prompts look for."""
    folder = tmp_path_factory.mktemp("named") / "models"
    folder.mkdir()
    shutil.copy(trained["malaria_last"], folder / "model_malaria_last.pt")
    shutil.copy(trained["malaria_every"], folder / "model_malaria_every_multi_loss.pt")
    shutil.copy(trained["gender_last"], folder / "model_gender_last.pt")
    return folder


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the base class's name
        pass


@pytest.fixture(scope="module")
def weights_server(trained: dict[str, Path], tmp_path_factory: pytest.TempPathFactory):
    """A local HTTP server (127.0.0.1, a thread) serving a real checkpoint as model_malaria_last.pt."""
    folder = tmp_path_factory.mktemp("served")
    shutil.copy(trained["malaria_last"], folder / "model_malaria_last.pt")
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(folder)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield {
            "url": f"http://127.0.0.1:{server.server_address[1]}/model_malaria_last.pt",
            "file": folder / "model_malaria_last.pt",
        }
    finally:
        server.shutdown()
        server.server_close()


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# --------------------------------------------------------------------------- single


def test_single_one_image_numbers_and_headless_show(trained, cells, tmp_path):
    image = cells["Parasitized"][0]
    out = tmp_path / "out"
    result = ok(
        wtl(
            "single",
            "--model",
            trained["malaria_last"],
            "--image",
            image,
            "--out",
            out,
            "--save-npz",
            "--show",
            cwd=tmp_path,
            drop_env=("DISPLAY", "WAYLAND_DISPLAY"),
        )
    )
    written = pngs(out)
    assert [p.name for p in written] == [f"{image.stem}_single.png"]
    check_png(written[0])
    assert "no display found" in result.stdout
    data = check_single_npz(written[0].with_suffix(".npz"), trained["malaria_last"], image)
    assert list(data["class_names"]) == ["Uninfected", "Parasitized"]
    probabilities = np.exp(data["logits"]) / np.exp(data["logits"]).sum()
    np.testing.assert_allclose(data["probabilities"], probabilities, atol=1e-5)
    assert int(data["predicted_index"]) == int(np.argmax(data["logits"]))


def test_single_several_images_and_a_folder(trained, cells, tmp_path):
    folder = tmp_path / "more cells"
    folder.mkdir()
    extra = cells["Uninfected"][:3]
    for path in extra:
        shutil.copy(path, folder / path.name)
    (folder / "notes.txt").write_text("not an image, skipped")
    singles = [cells["Parasitized"][1], cells["Uninfected"][5]]
    # Parasitized[1] and Uninfected[1] share a file name: the second picture must get a _2 name
    # instead of overwriting the first.
    assert singles[0].name == extra[1].name
    out = tmp_path / "out"
    # The resume checkpoint (.pt, with optimizer state) works as --model too.
    ok(
        wtl(
            "single",
            "--model",
            trained["malaria_last_resume"],
            "--image",
            *singles,
            folder,
            "--out",
            out,
            "--save-npz",
            cwd=tmp_path,
        )
    )
    expected: dict[str, Path] = {}
    for image in [*singles, *(folder / p.name for p in extra)]:
        name, number = f"{image.stem}_single", 1
        while f"{name}.png" in expected:
            number += 1
            name = f"{image.stem}_single_{number}"
        expected[f"{name}.png"] = image
    assert f"{singles[0].stem}_single_2.png" in expected
    assert sorted(p.name for p in pngs(out)) == sorted(expected)
    for png_name, image in expected.items():
        png = out / png_name
        check_png(png)
        # The npz names its image: each picture belongs to the input it was named after.
        check_single_npz(png.with_suffix(".npz"), trained["malaria_last_resume"], image)


@pytest.fixture(scope="module")
def predictions(trained, cells) -> dict[str, int]:
    """The independently computed predicted class of a few cells."""
    images = cells["Parasitized"][:3] + cells["Uninfected"][3:6]
    return {str(p): int(reference_single(trained["malaria_last"], p)["class_index"]) for p in images}


@pytest.mark.parametrize("form", ["name", "index"])
def test_single_counterfactual_class(trained, predictions, tmp_path, form):
    images = [Path(p) for p in predictions]
    names = ["Uninfected", "Parasitized"]
    target = 1 - predictions[str(images[0])]  # NOT the prediction for the first image
    answer = names[target].lower() if form == "name" else str(target)
    out = tmp_path / "out"
    ok(
        wtl(
            "single",
            "--model",
            trained["malaria_last"],
            "--image",
            *images,
            "--class",
            answer,
            "--out",
            out,
            "--save-npz",
            cwd=tmp_path,
        )
    )
    counterfactuals = 0
    for image in images:
        data = check_single_npz(out / f"{image.stem}_single.npz", trained["malaria_last"], image, target)
        assert int(data["class_index"]) == target
        assert int(data["predicted_index"]) == predictions[str(image)]
        counterfactuals += int(data["predicted_index"]) != target
    assert counterfactuals >= 1


# --------------------------------------------------------------------------- multi


def test_multi_every_block_numbers(trained, cells, tmp_path):
    images = [cells["Parasitized"][2], cells["Uninfected"][3]]
    out = tmp_path / "out"
    ok(wtl("multi", "--model", trained["malaria_every"], "--image", *images, "--out", out, "--save-npz", cwd=tmp_path))
    written = pngs(out)
    assert len(written) == 2
    network, _ = load_reference(trained["malaria_every"])
    for image in images:
        png = out / f"{image.stem}_multi_model_malaria_every_multi_loss.png"
        check_png(png)
        with np.load(png.with_suffix(".npz")) as npz:
            data = {key: npz[key] for key in npz.files}
        with torch.no_grad():
            outputs = network(load_image(image, SIZE)[None], return_outputs=True)
        final = outputs[-1][1][0].numpy()
        shown = int(data["class_index"])
        assert shown == int(np.argmax(final))
        np.testing.assert_allclose(data["logits"], final, **NUMBERS)
        for b in range(1, 5):
            for key in ("cam_block", "mean_block", "logits_block", "bias_block", "heatmap_block", "mean_heatmap_block"):
                assert f"{key}{b}" in data, f"{key}{b} missing"
            side = SIZE // 2**b
            assert data[f"cam_block{b}"].shape == data[f"mean_block{b}"].shape == (side, side)
            # The CAM identity with the CLI's own numbers ...
            identity = data[f"cam_block{b}"].astype(np.float64).mean() + float(data[f"bias_block{b}"])
            np.testing.assert_allclose(identity, data[f"logits_block{b}"][shown], **NUMBERS)
            # ... and the block's logits equal the network's own head, computed here.
            block, block_logits = outputs[b - 1]
            np.testing.assert_allclose(data[f"logits_block{b}"], block_logits[0].numpy(), **NUMBERS)
            np.testing.assert_allclose(data[f"mean_block{b}"], block[0].mean(0).numpy(), rtol=1e-5, atol=1e-5)
            heat = data[f"heatmap_block{b}"]
            assert heat.shape == (SIZE, SIZE) and heat.min() >= 0.0 and heat.max() <= 1.0
        # The default fused map is the geometric mean of the four normalised block maps,
        # min-max normalised: at the input's size (the panel) and at block 1's (cam_fused).
        assert str(data["fusion_rule"]) == "product"
        blocks = np.stack([data[f"heatmap_block{b}"] for b in range(1, 5)]).astype(np.float64)
        np.testing.assert_allclose(data["heatmap_fused"], min_max(np.prod(blocks, 0) ** 0.25), atol=1e-5)
        assert data["cam_fused"].shape == (SIZE // 2, SIZE // 2)
        fine = [
            min_max(
                F.interpolate(
                    torch.from_numpy(data[f"cam_block{b}"])[None, None],
                    size=SIZE // 2,
                    mode="bilinear",
                    align_corners=False,
                )[0, 0]
                .double()
                .numpy()
            )
            for b in range(1, 5)
        ]
        # Upsampled in float32 as the CLI does: near 0 the 4th root magnifies any rounding.
        expected = min_max(np.prod(np.stack(fine), 0) ** 0.25)
        np.testing.assert_allclose(data["cam_fused"], expected, atol=1e-5)


def min_max(values: np.ndarray) -> np.ndarray:
    """Scaled to [0, 1] (a constant map gives zeros)."""
    span = values.max() - values.min()
    return (values - values.min()) / span if span > 0 else np.zeros_like(values)


@pytest.mark.parametrize("rule", ["max", "product234"])
def test_multi_fuse_flag_picks_the_rule(trained, cells, tmp_path, rule):
    image = cells["Parasitized"][2]
    out = tmp_path / "out"
    result = ok(
        wtl(
            *["multi", "--model", trained["malaria_every"], "--image", image, "--out", out, "--save-npz"],
            *["--fuse", rule],
            cwd=tmp_path,
        )
    )
    with np.load(out / f"{image.stem}_multi_model_malaria_every_multi_loss.npz") as npz:
        blocks = np.stack([npz[f"heatmap_block{b}"] for b in range(1, 5)]).astype(np.float64)
        expected = blocks.max(0) if rule == "max" else np.prod(blocks[1:], 0) ** (1 / 3)
        np.testing.assert_allclose(npz["heatmap_fused"], min_max(expected), atol=1e-5)
        assert str(npz["fusion_rule"]) == rule
    assert "saved" in result.stdout


def test_the_cli_knows_every_fusion_rule():
    multi = where_to_look.build_parser()._subparsers._group_actions[0].choices["multi"]
    fuse = next(action for action in multi._actions if action.dest == "fuse")
    assert list(fuse.choices) == list(registry.FUSIONS) and set(registry.FUSIONS) == set(fusion.FUSION_RULES)
    assert fuse.default == registry.DEFAULT_FUSION == next(iter(registry.FUSIONS))


# --------------------------------------------------------------------------- gender100 and overlay


@pytest.fixture(scope="module")
def gender_runs(trained, gender_root, tmp_path_factory) -> dict:
    """gender100 --count 3, then single on exactly the files it used."""
    work = tmp_path_factory.mktemp("gender_runs")
    g100 = work / "g100"
    ok(
        wtl(
            "gender100",
            "--model",
            trained["gender_last"],
            "--data-dir",
            gender_root,
            "--count",
            "3",
            "--out",
            g100,
            "--save-npz",
            cwd=work,
        )
    )
    with np.load(g100 / "gender100.npz") as npz:
        data = {key: npz[key] for key in npz.files}
    test = gender_root / "Dataset" / "Test"
    files = {g: [test / g.capitalize() / str(n) for n in data[f"files_{g}"]] for g in ("male", "female")}
    singles = work / "singles"
    ok(
        wtl(
            "single",
            "--model",
            trained["gender_last"],
            "--image",
            *files["male"],
            *files["female"],
            "--out",
            singles,
            "--save-npz",
            cwd=work,
        )
    )
    return {"g100": g100, "data": data, "files": files, "singles": singles, "work": work}


def test_gender100_is_the_mean_of_single_heatmaps(gender_runs, gender_root):
    data, files = gender_runs["data"], gender_runs["files"]
    expected_files = GenderSet(gender_root, "test", max_samples_per_class=3, seed=0).samples
    for gender in ("male", "female"):
        assert len(files[gender]) == 3
        assert all(path.is_file() for path in files[gender])
        label = ["female", "male"].index(gender)
        assert sorted(files[gender]) == sorted(p for p, y in expected_files if y == label)
        heats = []
        for path in files[gender]:
            with np.load(gender_runs["singles"] / f"{path.stem}_single.npz") as npz:
                heats.append(npz["heatmap"])
        assert data[f"heatmap_{gender}"].shape == (SIZE, SIZE)
        np.testing.assert_allclose(data[f"heatmap_{gender}"], np.mean(heats, axis=0), atol=1e-5, rtol=0)
    # The two genders' maps come from different faces: they must not be identical.
    assert not np.allclose(data["heatmap_male"], data["heatmap_female"])
    check_png(gender_runs["g100"] / "gender100.png")
    check_png(gender_runs["g100"] / "gender_overlay.png")
    # Each region's density with its interval; these file names say no person, so each face is its own unit.
    regions = json.loads((gender_runs["g100"] / "gender100_regions.json").read_text())
    assert regions["bootstrap"]["unit"] == "image" and regions["bootstrap"]["units"] == {"Female": 3, "Male": 3}
    for figures in (f for shares in regions["shares"].values() for f in shares.values()):
        low, high = figures["density_ci95"]
        assert low <= figures["density"] <= high
    with np.load(gender_runs["g100"] / "gender_overlay.npz") as npz:
        np.testing.assert_allclose(npz["difference"], data["heatmap_male"] - data["heatmap_female"], atol=1e-6)


def test_gender100_writes_each_gender_and_overlay_reads_them(gender_runs):
    g100, data, work = gender_runs["g100"], gender_runs["data"], gender_runs["work"]
    for gender in ("male", "female"):
        check_png(g100 / f"gender100_{gender}.png")
        with np.load(g100 / f"gender100_{gender}.npz") as npz:
            np.testing.assert_allclose(npz["heatmap"], data[f"heatmap_{gender}"])
            assert str(npz["gender"]) == gender.capitalize() and npz["face"].shape == (SIZE, SIZE, 3)
    expected = (data["heatmap_male"] + data["heatmap_female"]) / 2
    # The two npz files, the PNGs beside them, or gender100.npz alone: the same blend.
    forms = {
        "npz": [g100 / "gender100_male.npz", g100 / "gender100_female.npz"],
        "png": [g100 / "gender100_male.png", g100 / "gender100_female.png"],
        "both": [g100 / "gender100.npz"],
    }
    for form, images in forms.items():
        out = work / f"overlay_{form}"
        ok(wtl("overlay", "--image", *images, "--out", out, "--save-npz", cwd=work))
        check_png(out / "gender_overlay.png")
        with np.load(out / "gender_overlay.npz") as npz:
            np.testing.assert_allclose(npz["blended"], expected, atol=1e-6)
            np.testing.assert_allclose(npz["difference"], data["heatmap_male"] - data["heatmap_female"], atol=1e-6)


def test_overlay_refuses_what_gender100_did_not_write(gender_runs):
    work, singles = gender_runs["work"], gender_runs["singles"]
    first, second = pngs(singles)[:2]
    out = work / "overlay_refused"
    line = one_line_error(wtl("overlay", "--image", first, second, "--out", out, cwd=work))
    assert "gender100_male.npz and gender100_female.npz" in line
    assert pngs(out) == []
    line = one_line_error(wtl("overlay", "--image", gender_runs["g100"] / "gender100_male.npz", cwd=work))
    assert "Female map is missing" in line


def test_gender100_says_when_fewer_faces_than_asked(trained, gender_root, tmp_path):
    result = ok(
        wtl("gender100", "--model", trained["gender_last"], "--data-dir", gender_root, "--count", "50", cwd=tmp_path)
    )
    assert "note: only 4 Female test faces" in result.stdout and "note: only 4 Male test faces" in result.stdout


# --------------------------------------------------------------------------- prompts


def test_prompts_malaria_every_block_with_a_retried_answer(named_models, cells, tmp_path):
    image = cells["Parasitized"][3]
    out = tmp_path / "out"
    result = ok(
        wtl("--models-dir", named_models, "--out", out, "--save-npz", cwd=tmp_path, input=f"x\nB\nA\n{image}\nB\nB\n")
    )
    assert result.stdout.count("Gender (A), Malaria (B)") == 2  # the invalid 'x' is asked again
    assert "Please answer A or B or C." in result.stdout
    png = out / f"{image.stem}_multi_model_malaria_every_multi_loss.png"
    assert pngs(out) == [png]
    check_png(png)
    with np.load(png.with_suffix(".npz")) as npz:
        assert {f"cam_block{b}" for b in range(1, 5)} <= set(npz.files)


def test_prompts_gender_demo_pictures(named_models, gender_root, tmp_path):
    out = tmp_path / "out"
    result = ok(wtl("--models-dir", named_models, "--out", out, cwd=tmp_path, input=f"A\nB\n{gender_root}\n"))
    test = gender_root / "Dataset" / "Test"
    expected = {Path(p).stem for p, _ in GenderSet(gender_root, "test", max_samples_per_class=10, seed=0).samples}
    per_gender = [min(10, len(list_images(test / g))) for g in ("Female", "Male")]
    written = pngs(out)
    assert len(written) == sum(per_gender) == len(expected)
    assert {p.name.removesuffix("_single.png") for p in written} == expected
    for png in written[:2]:
        check_png(png)
    assert result.stdout.count("saved ") == len(written)


def test_prompt_end_of_input_names_the_flag(named_models, tmp_path):
    out = tmp_path / "out"
    line = one_line_error(wtl("--models-dir", named_models, "--out", out, cwd=tmp_path, input="B\n"))
    assert "input ended" in line and "--image" in line
    assert pngs(out) == []


@pytest.fixture(scope="module")
def bare_clone(tmp_path_factory) -> Path:
    """A clone of the repository whose bundled weights are gone: the tool finds no model at all."""
    return throwaway_clone(tmp_path_factory.mktemp("bare") / "clone", leave_out=("models/bundled/",))


def test_prompt_without_models_declined(bare_clone, tmp_path):
    models = tmp_path / "empty_models"
    models.mkdir()
    result = wtl("--models-dir", models, "--out", tmp_path / "out", cwd=tmp_path, input="N\n", repo=bare_clone)
    line = one_line_error(result)
    assert "Download the pretrained models from the Google Drive folder of the original project?" in result.stdout
    assert "(Y/N)" not in result.stdout and "[Y/N]" in result.stdout
    assert "--model" in line
    assert list(models.iterdir()) == []


def test_prompt_without_models_downloads_and_goes_on(weights_server, cells, bare_clone, tmp_path):
    models = tmp_path / "empty_models"
    models.mkdir()
    image = cells["Uninfected"][4]
    out = tmp_path / "out"
    result = ok(
        wtl(
            "--models-dir",
            models,
            "--out",
            out,
            "--save-npz",
            cwd=tmp_path,
            env={"WTL_WEIGHTS_URL": weights_server["url"]},
            input=f"Y\nB\nA\n{image}\nA\n",
            repo=bare_clone,
        )
    )
    # The question names the source it will use: the host of WTL_WEIGHTS_URL, not Google Drive.
    assert "Download the pretrained models from 127.0.0.1 (WTL_WEIGHTS_URL)?" in result.stdout
    assert "Google Drive" not in result.stdout
    installed = models / "model_malaria_last.pt"
    assert [p.name for p in models.iterdir()] == [installed.name]
    assert installed.read_bytes() == weights_server["file"].read_bytes()
    png = out / f"{image.stem}_single.png"
    check_png(png)
    check_single_npz(png.with_suffix(".npz"), installed, image)
    assert not list(tmp_path.glob(".wtl-download-*"))


# --------------------------------------------------------------------------- download


def test_download_command_installs(weights_server, tmp_path):
    models = tmp_path / "models"
    result = ok(wtl("download", "--weights-url", weights_server["url"], "--models-dir", models, cwd=tmp_path))
    installed = models / "model_malaria_last.pt"
    assert f"installed {installed}" in result.stdout
    assert installed.read_bytes() == weights_server["file"].read_bytes()
    assert not list(tmp_path.glob(".wtl-download-*"))


def test_download_never_replaces_a_model_the_user_trained(weights_server, trained, tmp_path):
    models = tmp_path / "models"
    models.mkdir()
    mine = models / "model_malaria_last.pt"
    # The resumable checkpoint model_main.py wrote beside best.pt: optimizer state inside.
    shutil.copy(trained["malaria_last"].with_name("model_malaria_last.pt"), mine)
    before = mine.read_bytes()
    result = ok(wtl("download", "--weights-url", weights_server["url"], "--models-dir", models, cwd=tmp_path))
    assert mine.read_bytes() == before
    assert f"kept {mine}: it holds a training run's state" in result.stderr
    # A weights-only file (an earlier download) is replaced as before.
    mine.write_bytes(weights_server["file"].read_bytes()[:-1] + b"x")
    ok(wtl("download", "--weights-url", weights_server["url"], "--models-dir", models, cwd=tmp_path))
    assert mine.read_bytes() == weights_server["file"].read_bytes()


def test_download_from_a_closed_port(tmp_path):
    models = tmp_path / "models"
    url = f"http://127.0.0.1:{closed_port()}/model_malaria_last.pt"
    # gdown may print its retry notes; the report itself is one error line.
    line = one_line_error(wtl("download", "--weights-url", url, "--models-dir", models, cwd=tmp_path), strict=False)
    assert "refused" in line
    assert not models.exists() or list(models.iterdir()) == []
    assert not list(tmp_path.glob(".wtl-download-*"))


# --------------------------------------------------------------------------- unsafe and bad inputs


class _TouchOnLoad:
    """Unpickling this calls open(marker, 'w'): it creates the marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def malicious_checkpoint(path: Path, marker: Path) -> Path:
    torch.save({"net_state_dict": {}, "payload": _TouchOnLoad(marker)}, path)
    return path


def test_malicious_pickle_is_refused(cells, tmp_path):
    # The payload is live: a plain (unsafe) torch.load does run it.
    probe_marker = tmp_path / "probe_marker"
    torch.load(malicious_checkpoint(tmp_path / "probe.pt", probe_marker), weights_only=False)
    assert probe_marker.exists()

    marker = tmp_path / "pwned"
    evil = malicious_checkpoint(tmp_path / "evil.pt", marker)
    out = tmp_path / "out"
    line = one_line_error(
        wtl("single", "--model", evil, "--image", cells["Parasitized"][0], "--out", out, cwd=tmp_path)
    )
    assert "refused" in line and "evil.pt" in line
    assert not marker.exists()
    assert pngs(out) == []


def _png_bytes(tmp_path: Path) -> bytes:
    path = tmp_path / "source.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(path)
    return path.read_bytes()


@pytest.fixture(scope="module")
def bad_runs(trained, cells, tmp_path_factory) -> dict[str, tuple[subprocess.CompletedProcess[str], Path, str]]:
    """Every bad input's run, started side by side: case -> (result, its --out folder, text the line must hold)."""
    root = tmp_path_factory.mktemp("bad")
    good_png = _png_bytes(root)
    (root / "x.png").write_text("this is text, not a picture\n")
    (root / "empty.png").write_bytes(b"")
    (root / "truncated.png").write_bytes(good_png[: len(good_png) // 2])
    (root / "garbage.pt").write_bytes(np.random.default_rng(1).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    wrong = root / "class_folders"  # Female/ and Male/ right here: no Dataset/Test/ level
    for gender in ("Female", "Male"):
        (wrong / gender).mkdir(parents=True)
        Image.fromarray(np.full((20, 20, 3), 128, np.uint8)).save(wrong / gender / "face.jpg")
    (root / "somefile.txt").write_text("a regular file\n")
    model, image = trained["malaria_last"], cells["Parasitized"][0]
    cases = {
        "missing image": (["single", "--model", model, "--image", root / "nope.png"], "nope.png"),
        "text named png": (["single", "--model", model, "--image", root / "x.png"], "x.png"),
        "empty file": (["single", "--model", model, "--image", root / "empty.png"], "empty.png"),
        "truncated png": (["single", "--model", model, "--image", root / "truncated.png"], "truncated.png"),
        "garbage checkpoint": (["single", "--model", root / "garbage.pt", "--image", image], "garbage.pt"),
        "gender100 wrong layout": (
            ["gender100", "--model", trained["gender_last"], "--data-dir", wrong, "--count", "2"],
            "class_folders",
        ),
        "unknown class": (["single", "--model", model, "--image", image, "--class", "Healthy"], "Uninfected"),
        "multi on a last-block model": (["multi", "--model", model, "--image", image], "NetworkMultiLoss"),
        "features block 5": (["features", "--model", model, "--image", image, "--block", "5"], "block 5"),
        "features too many channels": (
            ["features", "--model", model, "--image", image, "--block", "2", "--channels", "65"],
            "block 2 has 1..64",
        ),
        "features unknown class": (
            ["features", "--model", model, "--image", image, "--class", "Healthy"],
            "Uninfected",
        ),
    }

    def run(case: str):
        args, needle = cases[case]
        out = root / f"out_{case.replace(' ', '_')}"
        return case, (wtl(*args, "--out", out, cwd=root), out, needle)

    unwritable = root / "somefile.txt" / "sub"
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = dict(pool.map(run, cases))
        results["unwritable out"] = (
            wtl("single", "--model", model, "--image", image, "--out", unwritable, cwd=root),
            unwritable,
            "somefile.txt",
        )
    return results


BAD_CASES = [
    "missing image",
    "text named png",
    "empty file",
    "truncated png",
    "garbage checkpoint",
    "gender100 wrong layout",
    "unknown class",
    "multi on a last-block model",
    "features block 5",
    "features too many channels",
    "features unknown class",
    "unwritable out",
]


@pytest.mark.parametrize("case", BAD_CASES)
def test_bad_input_is_one_error_line(bad_runs, case):
    result, out, needle = bad_runs[case]
    line = one_line_error(result)
    assert needle in line, line
    assert pngs(out) == []


def test_unusual_image_modes_work(trained, tmp_path):
    """16-bit grayscale PNG, RGBA PNG with transparency and grayscale JPEG all explain fine."""
    folder = tmp_path / "modes"
    folder.mkdir()
    ramp = (np.linspace(0, 65535, 48 * 48).reshape(48, 48)).astype(np.uint16)
    Image.fromarray(ramp).save(folder / "gray16.png")
    with Image.open(folder / "gray16.png") as check:
        assert check.mode.startswith("I")  # really saved as 16-bit
    rgba = np.zeros((48, 48, 4), np.uint8)
    rgba[8:40, 8:40] = (200, 120, 150, 255)  # an opaque square on a transparent background
    Image.fromarray(rgba, mode="RGBA").save(folder / "rgba.png")
    gray = np.random.default_rng(2).integers(0, 255, (48, 48), dtype=np.uint8)
    Image.fromarray(gray, mode="L").save(folder / "gray.jpg", quality=90)
    out = tmp_path / "out"
    ok(wtl("single", "--model", trained["malaria_last"], "--image", folder, "--out", out, "--save-npz", cwd=tmp_path))
    assert sorted(p.name for p in pngs(out)) == ["gray16_single.png", "gray_single.png", "rgba_single.png"]
    for name in ("gray16", "rgba", "gray"):
        check_png(out / f"{name}_single.png")
        source = next(folder.glob(f"{name}.*"))
        check_single_npz(out / f"{name}_single.npz", trained["malaria_last"], source)


# --------------------------------------------------------------------------- each command's own help


def test_single_help_shows_only_its_own_flags(tmp_path):
    help_text = ok(wtl("single", "--help", cwd=tmp_path)).stdout
    for flag in ("--image", "--model", "--class", "--method", "--save-npz"):
        assert flag in help_text
    for foreign in ("--count", "--methods", "--split", "--max-images", "--weights-url", "--data-dir"):
        assert foreign not in help_text, foreign
    assert "example:" in help_text
    assert "--count" in ok(wtl("gender100", "--help", cwd=tmp_path)).stdout
    top = ok(wtl("--help", cwd=tmp_path)).stdout
    assert all(command in top for command in ("single", "multi", "gender100", "overlay", "evaluate", "features"))


# --------------------------------------------------------------------------- demo and which model is used


@pytest.fixture(scope="module")
def clone_with_a_trained_model(trained, tmp_path_factory) -> Path:
    """A clone in which the user has trained a last-block malaria model into models/."""
    clone = throwaway_clone(tmp_path_factory.mktemp("trained_clone") / "clone")
    shutil.copy(trained["malaria_last"], clone / "models" / "model_malaria_last.best.pt")
    return clone


def test_demo_uses_the_bundled_models_even_beside_a_trained_one(clone_with_a_trained_model, tmp_path):
    clone = clone_with_a_trained_model
    result = ok(wtl("demo", "--out", tmp_path / "demo", cwd=clone, repo=clone))
    assert "model: models/bundled/model_malaria_last.pt (bundled)" in result.stdout
    assert "18 of 20 demo cells classified correctly by model_malaria_last.pt" in result.stdout
    # single without --model prefers what the user trained, and says which file it used.
    cell = sorted((clone / "data" / "demo" / "Parasitized").iterdir())[0]
    result = ok(wtl("single", "--image", cell, "--out", tmp_path / "single", cwd=clone, repo=clone))
    assert "model: models/model_malaria_last.best.pt" in result.stdout and "(bundled)" not in result.stdout
    assert git_status(clone) == ""


def test_demo_with_a_model_of_either_kind(trained, tmp_path):
    out = tmp_path / "last"
    result = ok(wtl("demo", "--model", trained["malaria_last"], "--out", out, cwd=tmp_path))
    assert "every-block pictures need a NetworkMultiLoss" in result.stdout
    assert len([p for p in pngs(out) if p.name.endswith("_single.png")]) == 20
    out = tmp_path / "every"
    ok(wtl("demo", "--model", trained["malaria_every"], "--out", out, cwd=tmp_path))
    multi = [p.name for p in pngs(out) if "_multi_" in p.name]
    assert len(multi) == 3 and not any(name.endswith("_2.png") for name in multi)


def test_demo_with_a_data_dir_uses_the_models_test_cells(trained, malaria_root, tmp_path):
    out = tmp_path / "out"
    result = ok(wtl("demo", "--model", trained["malaria_last"], "--data-dir", malaria_root, "--out", out, cwd=tmp_path))
    listed = json.loads(trained["malaria_last"].with_name("model_malaria_last.test_files.json").read_text())
    test_cells = set(listed["InfectedFilenames"]) | set(listed["UninfectedFilenames"])
    singles = [p.name.removesuffix("_single.png") for p in pngs(out) if p.name.endswith("_single.png")]
    assert singles and all(f"{name.split('_single')[0]}.png" in test_cells for name in singles)
    assert "demo cells classified correctly" in result.stdout


def test_demo_with_the_users_own_cells_draws_from_their_test_split(malaria_root, tmp_path):
    """The bundled model's listed test cells are NIH files; a user's folder holds others: its own test split is used."""
    from model_data import MalariaSet

    out = tmp_path / "out"
    result = ok(wtl("demo", "--data-dir", malaria_root, "--out", out, cwd=tmp_path))
    assert "none of the test cells listed in model_malaria_last.test_files.json are there" in result.stdout
    assert "the demo cells come from its own test split" in result.stdout
    test_cells = {path.stem for path, _ in MalariaSet(malaria_root, "test").samples}
    singles = [p.name.removesuffix("_single.png") for p in pngs(out) if p.name.endswith("_single.png")]
    assert singles and set(singles) <= test_cells
    assert "models/bundled/model_malaria_last.pt (bundled)" in result.stdout


# --------------------------------------------------------------------------- evaluate and compare on samples


def test_evaluate_max_images_draws_a_class_balanced_sample(tmp_path):
    out = tmp_path / "out"
    demo = REPO / "data" / "demo"
    bundled = REPO / "models" / "bundled" / "model_malaria_last.pt"
    result = ok(
        wtl(
            *["evaluate", "--model", bundled, "--data-dir", demo, "--split", "all", "--max-images", "10"],
            *["--methods", "cam", "--out", out],
            cwd=tmp_path,
        )
    )
    report = json.loads((out / "evaluate_model_malaria_last_all.json").read_text())
    assert report["classification"]["images"] == 10
    assert [row["support"] for row in report["classification"]["per_class"].values()] == [5, 5]
    assert "class-balanced sample of 10" in result.stdout


def test_evaluate_an_empty_split_names_split_all(tmp_path):
    cells = build_malaria(tmp_path / "few", patients=[1, 2, 3])  # all train patients: no test split
    bundled = REPO / "models" / "bundled" / "model_malaria_last.pt"
    line = one_line_error(wtl("evaluate", "--model", bundled, "--data-dir", cells, "--methods", "cam", cwd=tmp_path))
    assert "no images of the test split" in line and "--split all" in line
    out = tmp_path / "out"
    ok(
        wtl(
            "evaluate",
            "--model",
            bundled,
            "--data-dir",
            cells,
            "--split",
            "all",
            "--methods",
            "cam",
            "--out",
            out,
            cwd=tmp_path,
        )
    )
    report = json.loads((out / "evaluate_model_malaria_last_all.json").read_text())
    assert report["classification"]["images"] == len(list_images(cells / "Parasitized")) * 2


def test_evaluate_report_sanity_and_fused_rows_through_the_cli(tmp_path):
    """The bundled every-block model on the bundled cells: the report opens offline and says what it found."""
    out = tmp_path / "out"
    bundled = REPO / "models" / "bundled" / "model_malaria_every_multi_loss.pt"
    result = ok(
        wtl(
            *["evaluate", "--model", bundled, "--data-dir", REPO / "data" / "demo", "--split", "all"],
            *["--methods", "cam", "gradcam", "--report", "--sanity", "4", "--faithful-images", "4", "--out", out],
            cwd=tmp_path,
        )
    )
    stem = "evaluate_model_malaria_every_multi_loss_all"
    numbers = json.loads((out / f"{stem}.json").read_text())
    assert numbers["fusion_rule"] == "product"
    assert {"block1", "block4", "fused"} <= set(numbers["methods"]["cam"]) and "fused" in numbers["methods"]["gradcam"]
    assert {"misclassified", "map_misses", "suspect_labels"} <= set(numbers)
    # The sanity check: every method, every stage from the head down, printed and saved.
    assert numbers["sanity"]["stages"] == ["head", "block4", "block3", "block2", "block1"]
    assert {"cam", "cam fused", "gradcam"} <= set(numbers["sanity"]["methods"])
    assert result.stdout.count("sanity check") == 1
    index = out / f"{stem}_report" / "index.html"
    page = index.read_text()
    assert f"report: {index}" in result.stdout
    assert "<script" not in page and "http://" not in page and "https://" not in page and str(tmp_path) not in page
    for source in re.findall(r'src="([^"]+)"', page):
        assert (index.parent / source).is_file(), source
    assert "Suspect labels" in page and "Misclassified" in page


def test_compare_names_runs_by_their_folders(trained, malaria_root, tmp_path):
    for run in ("run1", "run2"):
        (tmp_path / run).mkdir()
        shutil.copy(trained["malaria_last"], tmp_path / run / "model_malaria_last.pt")
    result = ok(
        wtl(
            *["compare", "--model", tmp_path / "run1" / "model_malaria_last.pt"],
            *["--model", tmp_path / "run2" / "model_malaria_last.pt", "--data-dir", malaria_root],
            *["--out", tmp_path / "out"],
            cwd=tmp_path,
        )
    )
    assert "run1 vs run2: mean Spearman rho 1.000" in result.stdout
    assert (
        "run1 vs run2: Spearman rho of the per-class average maps: Uninfected 1.000 [1.000, 1.000], "
        "Parasitized 1.000 [1.000, 1.000]" in result.stdout
    )
    assert "95 % intervals: bootstrap over" in result.stdout and "patients" in result.stdout


# --------------------------------------------------------------------------- the fused panel is the saved map


def test_heatmap_fused_in_the_npz_is_what_the_panel_draws(trained, cells, tmp_path, monkeypatch):
    drawn = []
    original = draw_module.blocks_figure

    def spy(*args, **kwargs):
        # Bind by name: the figure's later parameters (titles, the look) may be passed either way.
        drawn.append(inspect.signature(original).bind(*args, **kwargs).arguments.get("fused"))
        return original(*args, **kwargs)

    monkeypatch.setattr(draw_module, "blocks_figure", spy)
    model = load_model(trained["malaria_every"])
    images = [cells["Parasitized"][1], cells["Uninfected"][2]]
    written = draw_module.draw(explain(model, images, blocks="every"), tmp_path, save_npz=True)
    assert len(written) == len(drawn) == 2
    for png, fused in zip(written, drawn):
        with np.load(png.with_suffix(".npz")) as npz:
            np.testing.assert_array_equal(npz["heatmap_fused"], fused)
            assert npz["heatmap_fused"].shape == (SIZE, SIZE)


# --------------------------------------------------------------------------- features


def test_features_of_both_networks_save_every_view_and_number(trained, cells, tmp_path):
    images = [cells["Parasitized"][0], cells["Uninfected"][1], cells["Parasitized"][2]]
    for key, block, stem in (
        ("malaria_last", 3, "model_malaria_last"),
        ("malaria_every", 2, "model_malaria_every_multi_loss"),
    ):
        out = tmp_path / key
        result = ok(
            wtl(
                *["features", "--model", trained[key], "--image", *images, "--block", str(block), "--channels", "4"],
                *["--steps", "3", "--examples", "2", "--out", out, "--save-npz"],
                cwd=tmp_path,
            )
        )
        assert "class Parasitized" in result.stdout
        names = sorted(p.name for p in pngs(out))
        # The block's channels, the class, block 1's and block 2's filters, and the block's maps.
        assert len(names) == 5 and f"features_{stem}_block{block}_Parasitized.png" in names
        assert f"features_{stem}_filters_block2.png" in names
        for png in pngs(out):
            check_png(png)
        with np.load(out / f"features_{stem}_block{block}_Parasitized.npz") as npz:
            assert npz["channels"].shape == npz["weights"].shape == npz["activations"].shape == (4,)
            assert npz["maximizers"].shape == (4, 3, SIZE, SIZE)
            assert npz["maximizers"].min() >= 0.0 and npz["maximizers"].max() <= 1.0
            assert npz["examples"].shape[:2] == npz["example_activations"].shape == (4, 2)
            assert npz["filters"].shape == (32, 3, 5, 5)
            assert npz["class_maximizer"].shape[1:] == (3, SIZE, SIZE)
            # A head ranks by its weights: the top 4 of W for Parasitized (block 3 of a Network has none).
            if key == "malaria_every":
                network, _ = load_reference(trained[key])
                weight = network.classifier[2].weight @ network.transform2.weight
                top = weight[1].topk(4)
                np.testing.assert_array_equal(npz["channels"], top.indices.numpy())
                np.testing.assert_allclose(npz["weights"], top.values.detach().numpy(), rtol=1e-5, atol=1e-7)
