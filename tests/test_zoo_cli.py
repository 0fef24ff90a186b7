"""torchvision networks through the command lines: `single --arch ... --save-npz`, `multi` per stage, and
`model_main.py --network resnet18` trained, killed, resumed, pretrained, frozen, and used by every command."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import REPO, SUBPROCESS_THREADS, error_lines, randomise_batch_norm, run_cli
from PIL import Image
from test_zoo import independent_gradcam

from wtl.cli import main as cli_main
from wtl.data.images import load_image
from wtl.maps.cam import explain_last_block
from wtl.maps.ops import heatmap
from wtl.nets import zoo

CLASSES = "Uninfected,Parasitized"
QUICK = ["--image-size", "32", "--batch-size", "8", "--workers", "0", "--max-per-class", "12", "--device", "cpu"]


def plain_weights(tmp_path: Path, arch: str, classes: int, seed: int = 0) -> tuple[Path, zoo.TorchvisionNet]:
    """A plain torchvision state dict (random weights, non-trivial batch norms) saved as `torch.save` writes it."""
    torch.manual_seed(seed)
    network = randomise_batch_norm(zoo.build(arch, classes), seed).eval()
    with torch.no_grad():
        network.linear.weight.normal_(0, 1)
    path = tmp_path / f"{arch}_{classes}.pt"
    torch.save(network.net.state_dict(), path)
    return path, network


def picture(tmp_path: Path, size: int = 64) -> Path:
    path = tmp_path / "picture.png"
    pixels = np.random.default_rng(0).integers(0, 256, (size, size, 3)).astype(np.uint8)
    Image.fromarray(pixels).save(path)
    return path


@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.parametrize(("arch", "classes"), [("resnet18", 2), ("densenet121", 2), ("resnet18", 1)])
def test_single_arch_save_npz_cam_identity_and_gradcam(
    tmp_path: Path, arch: str, classes: int, capsys: pytest.CaptureFixture[str]
) -> None:
    weights, network = plain_weights(tmp_path, arch, classes)
    image = picture(tmp_path)
    flags = ["--model", weights, "--arch", arch, "--classes", CLASSES, "--image-size", "64", "--preprocess", "squash"]
    done = run_cli(
        "single", "--image", image, *flags, "--save-npz", "--out", tmp_path / "out", script="where_to_look.py"
    )
    assert done.returncode == 0, done.stderr
    numbers = np.load(tmp_path / "out" / "picture_single.npz")
    shown = int(numbers["class_index"])
    # The identity mean(CAM) + bias = logit, in the file's float32, and the CAM of a float64 run of the same network.
    assert float(numbers["cam"].mean() + numbers["bias"]) == pytest.approx(float(numbers["logits"][shown]), abs=1e-4)
    x = load_image(image, 64, "squash")[None].double()
    exact = explain_last_block(network.double(), x, shown)
    np.testing.assert_allclose(numbers["cam"], exact.cam[0].numpy(), rtol=1e-4, atol=1e-5)
    assert float(exact.cam.mean() + exact.bias[0]) == pytest.approx(float(exact.logits[0, shown]), abs=1e-12)
    if classes == 1:
        np.testing.assert_allclose(numbers["logits"][0], -numbers["logits"][1], rtol=1e-6)

    # Grad-CAM through the same command (in this process: a second start-up of torch buys nothing), for a class
    # with positive evidence somewhere (Grad-CAM is ReLU'd: a class without any has a blank map).
    cls = next(c for c in (1, 0) if independent_gradcam(network.double(), x, c).max() > 0)
    code = cli_main.main(
        ["single", "--image", str(image), *map(str, flags), "--method", "gradcam", "--class", str(cls)]
        + ["--save-npz", "--out", str(tmp_path / "out")]
    )
    assert code == 0, capsys.readouterr().err
    drawn = np.load(tmp_path / "out" / "picture_single_gradcam.npz")["heatmap"]
    expected = heatmap(independent_gradcam(network.double(), x, cls), (64, 64))[0].numpy()
    assert np.corrcoef(drawn.ravel(), expected.ravel())[0, 1] > 0.9999
    try:
        from pytorch_grad_cam import GradCAM
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
    except ImportError:
        return  # no dependency of this project: see docs/torchvision.md for the run with it
    net = network.float().net
    layer = net.get_submodule(zoo.SPECS[arch].stages[-1])
    theirs = GradCAM(model=net, target_layers=[layer])(
        input_tensor=network.normalised(x.float()), targets=[ClassifierOutputTarget(0 if classes == 1 else cls)]
    )[0]
    if classes == 1 and cls == 0:
        return  # their map of the one logit is our positive class's; the negation has no Grad-CAM of theirs
    correlation = float(np.corrcoef(drawn.ravel(), theirs.ravel())[0, 1])
    print(f"single --arch {arch} ({classes} output(s)) gradcam vs pytorch-grad-cam: correlation {correlation:.7f}")
    assert correlation >= 0.999


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_multi_shows_every_stage_of_a_torchvision_network(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    weights, _ = plain_weights(tmp_path, "resnet18", 2)
    image = picture(tmp_path)
    argv = ["multi", "--image", str(image), "--model", str(weights), "--arch", "resnet18", "--classes", CLASSES]
    assert (
        cli_main.main([*argv, "--method", "gradcam", "--image-size", "64", "--save-npz", "--out", str(tmp_path)]) == 0
    )
    numbers = np.load(tmp_path / "picture_multi_resnet18_2_gradcam.npz")
    assert [numbers[f"cam_block{b}"].shape for b in range(1, 5)] == [(16, 16), (8, 8), (4, 4), (2, 2)]
    with Image.open(tmp_path / "picture_multi_resnet18_2_gradcam.png") as png:
        assert png.width > 1000
    capsys.readouterr()
    assert cli_main.main([*argv, "--out", str(tmp_path)]) == 2  # the exact every-block CAM needs heads per block
    (line,) = error_lines(capsys.readouterr().err)
    assert "for this resnet18 pass --method gradcam" in line


def train(*flags: str | Path) -> subprocess.CompletedProcess[str]:
    return run_cli("--dataset", "malaria", "--network", "resnet18", *QUICK, *flags)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_resnet18_trains_resumes_after_kill_and_every_command_reads_it_without_arch(
    malaria_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    models = tmp_path / "models"
    checkpoint = models / "model_malaria_resnet18.pt"
    command = [sys.executable, "model_main.py", "--dataset", "malaria", "--network", "resnet18", *QUICK]
    command += ["--data-dir", str(malaria_root), "--epochs", "4", "--models-dir", str(models)]
    env = dict(os.environ, MPLBACKEND="Agg", **SUBPROCESS_THREADS)
    process = subprocess.Popen(command, cwd=REPO, env=env, stdin=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 300
        while not checkpoint.exists() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert checkpoint.exists(), "no checkpoint after the first epoch"
        process.send_signal(signal.SIGKILL)  # no clean-up of any kind: the atomic write must have been enough
    finally:
        process.wait()
    stopped = torch.load(checkpoint, weights_only=True)["epoch"]
    assert 1 <= stopped < 4
    resumed = train("--data-dir", malaria_root, "--epochs", "4", "--models-dir", models)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming {checkpoint} after epoch {stopped} of 4" in resumed.stderr
    saved = torch.load(checkpoint, weights_only=True)
    assert saved["epoch"] == 4 and saved["arch"] == "resnet18" and saved["class_names"] == ["Uninfected", "Parasitized"]
    assert saved["normalisation"]["mean"] == pytest.approx([0.485, 0.456, 0.406])
    assert [row["epoch"] for row in saved["history"]] == list(range(1, 5)) and "cpu_seconds" in saved["history"][0]
    assert not [name for name in os.listdir(models) if name.endswith(".part")]
    best = models / "model_malaria_resnet18.best.pt"

    # Every command reads the checkpoint without --arch.
    cells = sorted((malaria_root / "cell_images" / "Parasitized").glob("*.png"))[:2]
    single = run_cli(
        "single", "--model", best, "--image", *cells, "--save-npz", "--out", tmp_path / "out", script="where_to_look.py"
    )
    assert single.returncode == 0, single.stderr
    numbers = np.load(tmp_path / "out" / f"{cells[0].stem}_single.npz")
    assert float(numbers["cam"].mean() + numbers["bias"]) == pytest.approx(
        float(numbers["logits"][int(numbers["class_index"])]), abs=1e-4
    )
    out = str(tmp_path / "out")
    assert (
        cli_main.main(["multi", "--model", str(best), "--image", str(cells[0]), "--method", "gradcam", "--out", out])
        == 0
    )
    evaluate = ["evaluate", "--model", str(best), "--data-dir", str(malaria_root), "--report", "--out", out]
    assert cli_main.main([*evaluate, "--sanity", "2", "--faithful-images", "2", "--device", "cpu"]) == 0
    report = json.loads((tmp_path / "out" / "evaluate_model_malaria_resnet18_test.json").read_text())
    assert report["sanity"]["stages"] == ["head", "layer4", "layer3", "layer2", "layer1"]
    assert report["methods"]["cam"]["last"]["pointing_counted"] > 0
    assert (tmp_path / "out" / "evaluate_model_malaria_resnet18_test_report" / "index.html").is_file()
    compare = ["compare", "--model", str(best), "--model", "models/bundled/model_malaria_last.pt"]
    assert cli_main.main([*compare, "--data-dir", str(malaria_root), "--out", out, "--device", "cpu"]) == 0
    assert "mean Spearman rho" in capsys.readouterr().out


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_pretrained_file_and_imagenet_offline_and_the_frozen_backbone(
    malaria_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    torch.manual_seed(5)
    imagenet_like = zoo.torchvision_model("resnet18", 1000).state_dict()
    source = tmp_path / "resnet18_imagenet_like.pth"
    torch.save(imagenet_like, source)
    models = tmp_path / "models"
    first = train(
        "--data-dir",
        malaria_root,
        "--epochs",
        "1",
        "--pretrained",
        source,
        "--freeze-backbone",
        "1",
        "--models-dir",
        models,
    )
    assert first.returncode == 0, first.stderr
    assert f"pretrained: 120 of 122 tensors from {source}; new: fc" in first.stderr
    assert "train (head only)" in first.stderr
    after_one = torch.load(models / "model_malaria_resnet18.pt", weights_only=True)["net_state_dict"]
    backbone = [k for k in imagenet_like if not k.startswith("fc.")]
    # Frozen: the backbone's weights and its batch-norm statistics are the pretrained ones; the head moved.
    assert all(torch.equal(after_one[f"net.{k}"], imagenet_like[k]) for k in backbone)
    second = train(
        "--data-dir",
        malaria_root,
        "--epochs",
        "2",
        "--pretrained",
        source,
        "--freeze-backbone",
        "1",
        "--models-dir",
        models,
    )
    assert second.returncode == 0, second.stderr
    assert "resuming" in second.stderr and "pretrained:" not in second.stderr  # resumed weights, not re-read
    assert "(head only)" not in second.stderr
    after_two = torch.load(models / "model_malaria_resnet18.pt", weights_only=True)
    assert not torch.equal(
        after_two["net_state_dict"]["net.layer1.0.conv1.weight"], imagenet_like["layer1.0.conv1.weight"]
    )
    assert [row.get("frozen_backbone", False) for row in after_two["history"]] == [True, False]

    # --pretrained imagenet: torchvision's download, here offline (a proxy nobody listens on), then from its cache.
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    for variable in ("https_proxy", "HTTPS_PROXY", "http_proxy", "HTTP_PROXY"):
        monkeypatch.setenv(variable, "http://127.0.0.1:9")
    offline = train(
        "--data-dir", malaria_root, "--epochs", "1", "--pretrained", "imagenet", "--models-dir", tmp_path / "m"
    )
    assert offline.returncode == 2 and "Traceback" not in offline.stderr
    (line,) = error_lines(offline.stderr)
    cache = tmp_path / "torch" / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    assert "cannot download torchvision's ImageNet weights of resnet18" in line
    assert "https://download.pytorch.org/models/resnet18-f37072fd.pth" in line and str(cache) in line
    cache.parent.mkdir(parents=True, exist_ok=True)
    torch.save(imagenet_like, cache)  # what a download would have left there
    cached = train(
        "--data-dir", malaria_root, "--epochs", "1", "--pretrained", "imagenet", "--models-dir", tmp_path / "m"
    )
    assert cached.returncode == 0, cached.stderr
    assert "pretrained: 120 of 122 tensors from torchvision's ImageNet weights (resnet18-f37072fd.pth)" in cached.stderr
    saved = torch.load(tmp_path / "m" / "model_malaria_resnet18.pt", weights_only=True)
    assert saved["pretrained"] == "imagenet"
