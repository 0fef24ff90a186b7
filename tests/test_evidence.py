"""Maps in log-odds units and one colour scale per model: the identities, the sidecar, what the pictures draw."""

from __future__ import annotations

import inspect
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import randomise_batch_norm

from wtl import names
from wtl.checkpoints.io import save_checkpoint
from wtl.checkpoints.loading import load_model
from wtl.checkpoints.scales import ModelScale, missing_scale_note, read_scale, scale_split, write_scale
from wtl.maps import cam as cams
from wtl.maps.explain import explain
from wtl.maps.ops import evidence_weights
from wtl.maps.scale import SCALE_METHODS, measure_scale, model_scale
from wtl.nets.seed import Architecture, Network, NetworkMultiLoss
from wtl.plot import draw as draw_module
from wtl.plot.style import EVIDENCE_CMAP, LOOK
from wtl.resources import bundled_dir

SIZE = 32


def log_odds(logits: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """z_c - z_other for two classes, else the logit z_c."""
    chosen = logits.gather(1, classes[:, None]).squeeze(1)
    if logits.shape[1] != 2:
        return chosen
    return chosen - logits.gather(1, (1 - classes)[:, None]).squeeze(1)


@pytest.mark.parametrize("classes", [2, 3])
@pytest.mark.parametrize("blocks", [4, 2])
def test_evidence_mean_plus_bias_is_the_log_odds_for_every_block_and_the_last(classes: int, blocks: int):
    torch.manual_seed(classes * 10 + blocks)
    images = torch.rand(5, 3, SIZE, SIZE)
    architecture = Architecture(blocks=blocks)
    last = randomise_batch_norm(Network(num_classes=classes, architecture=architecture)).eval()
    every = randomise_batch_norm(NetworkMultiLoss(num_classes=classes, architecture=architecture)).eval()
    for class_index in (None, 0, torch.arange(5) % classes):
        single = cams.explain_last_block(last, images, class_index)
        expected = log_odds(single.logits, single.class_index)
        torch.testing.assert_close(single.evidence.mean((1, 2)) + single.evidence_bias, expected, atol=1e-4, rtol=1e-5)
        multi = cams.explain_every_block(every, images, class_index)
        for evidence, bias, logits in zip(multi.evidences, multi.evidence_biases, multi.block_logits):
            torch.testing.assert_close(
                evidence.mean((1, 2)) + bias, log_odds(logits, multi.class_index), atol=1e-4, rtol=1e-5
            )
        head = cams.explain_last_block(every, images, class_index)  # the last block of the every-block network
        torch.testing.assert_close(head.evidence, multi.evidences[-1])


def test_two_class_evidence_is_the_difference_of_the_two_classes_maps():
    network = randomise_batch_norm(Network()).eval()
    images = torch.rand(3, 3, SIZE, SIZE)
    for c in (0, 1):
        explained = cams.explain_last_block(network, images, c)
        other = cams.explain_last_block(network, images, 1 - c)
        torch.testing.assert_close(explained.evidence, explained.cam - other.cam)
        torch.testing.assert_close(explained.evidence, -other.evidence)
    weight, bias = torch.randn(2, 7), torch.randn(2)
    w, b = evidence_weights(weight, bias, torch.tensor([1, 0]))
    torch.testing.assert_close(w[0], weight[1] - weight[0])
    torch.testing.assert_close(b, torch.stack([bias[1] - bias[0], bias[0] - bias[1]]))


def checkpoint_with_scale(folder: Path, kind: str = "last", scale: bool = True) -> Path:
    """A real checkpoint file of a random network (and its sidecar, measured on random pictures)."""
    torch.manual_seed(0)
    network = randomise_batch_norm(Network() if kind == "last" else NetworkMultiLoss()).eval()
    path = folder / f"model_malaria_{kind}.pt"
    save_checkpoint(
        {"net_state_dict": network.state_dict(), "class_names": ["Uninfected", "Parasitized"], "image_size": SIZE},
        path,
    )
    if scale:
        batches = [torch.rand(6, 3, SIZE, SIZE) for _ in range(2)]
        write_scale(model_scale(network, batches, "random pictures (12 images)"), path)
    return path


def test_scale_sidecar_sits_beside_the_weights_and_reads_back(tmp_path: Path):
    path = checkpoint_with_scale(tmp_path, "every")
    assert names.scale_file(path) == tmp_path / "model_malaria_every.scale.json"
    assert names.scale_file(tmp_path / "x.best.pt").name == "x.best.scale.json"  # the best weights have their own
    scale = read_scale(path)
    assert scale is not None and scale.images == 12 and set(scale.values) == set(SCALE_METHODS)
    assert set(scale.values["cam"]) == {"block1", "block2", "block3", "block4", "last"}
    assert scale.values["cam"]["last"] == scale.values["cam"]["block4"] > 0
    assert load_model(path).scale == scale
    names.scale_file(path).write_text("{not json")
    with pytest.raises(Exception, match="not a scale file"):
        read_scale(path)


def test_the_scale_is_the_percentile_of_the_absolute_evidence():
    network = randomise_batch_norm(Network()).eval()
    images = torch.rand(8, 3, SIZE, SIZE)
    values, seen = measure_scale(network, [images[:4], images[4:]], ["cam"], percentile=90.0)
    evidence = cams.explain_last_block(network, images).evidence
    assert seen == 8
    assert values["cam"]["last"] == pytest.approx(float(np.percentile(evidence.abs().numpy(), 90.0)), rel=1e-5)


@pytest.mark.parametrize("kind", ["last", "every"])
def test_heatmap_shared_in_the_npz_is_what_the_default_picture_draws(tmp_path: Path, monkeypatch, kind: str):
    model = load_model(checkpoint_with_scale(tmp_path, kind))
    drawn: list[tuple[np.ndarray, object]] = []
    if kind == "last":
        original = draw_module.single_figure

        def spy(image, heat, title, caption="", look=LOOK):
            drawn.append((heat, look))
            return original(image, heat, title, caption, look)

        monkeypatch.setattr(draw_module, "single_figure", spy)
    else:
        original_blocks = draw_module.blocks_figure

        def spy_blocks(*args, **kwargs):
            # Bind by name: the figure's later parameters may be passed either way.
            bound = inspect.signature(original_blocks).bind(*args, **kwargs).arguments
            drawn.append((bound["cam_heats"], bound.get("block_looks")))
            return original_blocks(*args, **kwargs)

        monkeypatch.setattr(draw_module, "blocks_figure", spy_blocks)
    pictures = torch.rand(2, 3, SIZE, SIZE)
    result = explain(model, pictures, blocks="last" if kind == "last" else "every")
    written = draw_module.draw(result, tmp_path / "out", save_npz=True)  # the default: the model's scale
    assert len(written) == len(drawn) == 2
    for png, (heat, look) in zip(written, drawn):
        with np.load(png.with_suffix(".npz")) as npz:
            assert str(npz["scale_drawn"]) == "model"
            if kind == "last":
                np.testing.assert_array_equal(npz["heatmap_shared"], heat)
                assert npz["heatmap_shared"].shape == (SIZE, SIZE)
                scale = float(npz["shared_scale"])
                assert scale == model.scale.of("cam", "last")
                assert (look.vmin, look.vmax, look.cmap, look.fade) == (-scale, scale, EVIDENCE_CMAP, True)
                assert "log-odds" in look.label
                # In log-odds: its mean (at feature resolution: the evidence's) plus the bias is the log-odds.
                odds = float(npz["evidence"].mean() + npz["evidence_bias"])
                logits = npz["logits"]
                c = int(npz["class_index"])
                assert odds == pytest.approx(float(logits[c] - logits[1 - c]), abs=1e-4)
            else:
                for b in range(4):
                    np.testing.assert_array_equal(npz[f"heatmap_shared_block{b + 1}"], heat[b])
                    assert (
                        look[b].vmax
                        == float(npz[f"shared_scale_block{b + 1}"])
                        == model.scale.of("cam", f"block{b + 1}")
                    )
                np.testing.assert_array_equal(npz["heatmap_shared"], heat[-1])
                np.testing.assert_allclose(npz["evidence"], npz["evidence_block4"])


@pytest.fixture
def drawn(monkeypatch) -> list:
    """(heat, look) of every single-view figure drawn, in order (the real figure is still drawn)."""
    calls = []
    original = draw_module.single_figure

    def spy(image, heat, title, caption="", look=LOOK):
        calls.append((heat, look))
        return original(image, heat, title, caption, look)

    monkeypatch.setattr(draw_module, "single_figure", spy)
    return calls


def test_scale_image_draws_the_per_image_stretch_and_a_model_without_scale_falls_back(tmp_path: Path, drawn):
    model = load_model(checkpoint_with_scale(tmp_path))
    pictures = torch.rand(1, 3, SIZE, SIZE)
    result = explain(model, pictures)
    draw_module.draw(result, tmp_path / "a", save_npz=True, scale="image")
    heat, look = drawn[-1]
    np.testing.assert_array_equal(heat, result.heatmap[0].numpy())
    assert (look.vmin, look.vmax, look.fade) == (0.0, 1.0, False)
    (tmp_path / "bare").mkdir()
    bare = load_model(checkpoint_with_scale(tmp_path / "bare", scale=False))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        written = draw_module.draw(explain(bare, pictures), tmp_path / "b", save_npz=True)
    assert any("no shared colour scale" in str(w.message) for w in caught)
    with np.load(written[0].with_suffix(".npz")) as npz:
        assert str(npz["scale_drawn"]) == "image" and np.isnan(npz["shared_scale"])
    np.testing.assert_array_equal(drawn[-1][0], explain(bare, pictures).heatmap[0].numpy())


def test_grad_cam_family_draws_on_its_own_unitless_scale(tmp_path: Path, drawn):
    model = load_model(checkpoint_with_scale(tmp_path))
    result = explain(model, torch.rand(1, 3, SIZE, SIZE), method="gradcam")
    assert result.evidence is None  # no exact units for Grad-CAM
    draw_module.draw(result, tmp_path / "g", save_npz=True)
    heat, look = drawn[-1]
    np.testing.assert_array_equal(heat, result.heatmap_shared[0].numpy())
    assert look.vmin == 0.0 and look.vmax == model.scale.of("gradcam", "last") and "no units" in look.label


@pytest.mark.slow
def test_scale_command_writes_the_sidecar_once_and_studies_the_brightness(tmp_path: Path, cli, malaria_root):
    # A real (random) checkpoint with its test-split manifest, measured by the command.
    path = checkpoint_with_scale(tmp_path, scale=False)
    result = cli(
        "scale",
        "--model",
        path,
        "--data-dir",
        malaria_root,
        "--out",
        tmp_path / "out",
        "--bootstrap",
        "200",
        script="where_to_look.py",
    )
    assert result.returncode == 0, result.stderr
    assert names.scale_file(path).is_file() and "shared colour scale:" in result.stdout
    assert "brightness of the default picture" in result.stdout and "Uninfected/Parasitized" in result.stdout
    study = json.loads((tmp_path / "out" / "scale_model_malaria_last_test.json").read_text())
    assert study["classes"]["Uninfected"]["image_peak"] == pytest.approx(1.0)
    assert study["unit"] == "patient" and study["pointing_counted"] > 0
    again = cli(
        "scale",
        "--model",
        path,
        "--data-dir",
        malaria_root,
        "--out",
        tmp_path / "out",
        "--bootstrap",
        "200",
        script="where_to_look.py",
    )
    assert again.returncode == 0 and "--force measures it again" in again.stdout
    assert isinstance(ModelScale.from_json(json.loads(names.scale_file(path).read_text())), ModelScale)


def test_the_scale_split_is_test_then_validation_then_training():
    assert scale_split({"train": 30, "val": 5, "test": 4}) == "test"
    assert scale_split({"train": 30, "val": 5, "test": 0}) == "val"
    assert scale_split({"train": 30}) == "train"


def test_the_missing_scale_note_says_how_to_get_one_and_that_a_bundled_model_is_copied_first(tmp_path: Path):
    own = missing_scale_note(tmp_path / "model_malaria_last.best.pt", "cam")
    assert "drawn per image" in own and "where_to_look.py scale" in own and "copy" not in own
    bundled = missing_scale_note(bundled_dir() / "model_gender_last.pt", "gradcam")
    assert "for gradcam" in bundled and "copy model_gender_last.pt out of models/bundled/" in bundled
