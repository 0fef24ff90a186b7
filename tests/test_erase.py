"""Edit the picture and classify again: the background mask, the fills, and hand-set networks that read one region."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import run_cli
from PIL import Image

from wtl.checkpoints.io import save_checkpoint
from wtl.checkpoints.loading import load_model
from wtl.maps.erase import background_mask, dilate, fill_colour, inpaint, median_colour
from wtl.metrics.erasure import erase, erase_region, read_mask, region_mask
from wtl.metrics.intervention import DILATION_PX
from wtl.metrics.stain import stain_mask
from wtl.nets.seed import Architecture, Network

REPO = Path(__file__).resolve().parents[1]
PINK, PURPLE = (0.86, 0.59, 0.67), (0.27, 0.08, 0.35)
SIZE = 32


def cell(stain: bool = True, hole: bool = False) -> torch.Tensor:
    """A pink disc on black, with a purple stain (and a black hole inside the cell that is not background)."""
    ys, xs = torch.meshgrid(torch.arange(SIZE), torch.arange(SIZE), indexing="ij")
    image = torch.zeros(3, SIZE, SIZE)
    disc = (ys - 16) ** 2 + (xs - 16) ** 2 <= 12**2
    image[:, disc] = torch.tensor(PINK)[:, None]
    if stain:
        spot = (ys - 13) ** 2 + (xs - 18) ** 2 <= 3**2
        image[:, spot] = torch.tensor(PURPLE)[:, None]
    if hole:
        image[:, 20:22, 10:12] = 0.0
    return image


def test_background_is_the_black_joined_to_the_border() -> None:
    image = cell(hole=True)
    mask = background_mask(image, grow=0)
    black = image.amax(dim=0) <= 0.15
    assert bool(mask[0, 0]) and bool(mask[-1, -1])
    assert not bool(mask[20:22, 10:12].any())  # the dark hole inside the cell is not background
    assert torch.equal(mask | (black & ~mask), black) and int((black & ~mask).sum()) == 4
    assert torch.equal(background_mask(image, grow=1), dilate(mask, 1))
    # A picture without a black surround (a face, a photo) has no background to remove.
    assert not bool(background_mask(torch.full((3, 16, 16), 0.6)).any())


def test_fills() -> None:
    image = cell(stain=False)
    background = background_mask(image)
    assert median_colour(image, ~background).tolist() == pytest.approx(list(PINK))
    painted = fill_colour(image, background, median_colour(image, ~background))
    assert torch.allclose(painted[:, background], torch.tensor(PINK)[:, None])
    assert torch.equal(painted[:, ~background], image[:, ~background])
    # A hole in a constant region is filled with that constant (a harmonic fill of constant borders).
    flat = torch.full((3, 20, 20), 0.4)
    hole = torch.zeros(20, 20, dtype=torch.bool)
    hole[6:14, 6:14] = True
    damaged = flat.clone()
    damaged[:, hole] = 1.0
    assert torch.allclose(inpaint(damaged, hole), flat, atol=1e-4)
    # A linear ramp is harmonic: the fill reproduces it.
    ramp = torch.linspace(0, 1, 20).expand(3, 20, 20).clone()
    broken = ramp.clone()
    broken[:, hole] = 0.0
    assert torch.allclose(inpaint(broken, hole, steps=2000), ramp, atol=2e-3)


def test_the_stain_is_filled_from_the_cell_and_the_background_by_its_median() -> None:
    image = cell()
    erased, mask = erase_region(image, "stain")
    assert torch.equal(mask, dilate(stain_mask(image), DILATION_PX) & ~background_mask(image))
    assert not bool(stain_mask(erased).any())
    assert torch.allclose(erased[:, mask], torch.tensor(PINK)[:, None], atol=0.02)  # cytoplasm, not black
    assert torch.equal(erased[:, ~mask], image[:, ~mask])
    erased, mask = erase_region(image, "background")
    assert bool((erased.amax(dim=0) > 0.15).all())  # no black left
    with pytest.raises(ValueError, match="region"):
        region_mask(image, "sky")


def hand_set(reads: str) -> Network:
    """A one-block network whose Parasitized logit reads one region: the stain (purple) or the background (black).

    Channel 0 = ReLU(B - G - 0.15) is on for purple (0.27) only; channel 1 = ReLU(0.15 - max-ish brightness)
    is on for black only. The classifier reads the mean of the one channel against a threshold.
    """
    network = Network(num_classes=2, architecture=Architecture(1, 5, 2)).eval()
    with torch.no_grad():
        for parameter in network.parameters():
            parameter.zero_()
        conv, bn = network.features[0], network.features[2]
        conv.weight[0, :, 2, 2] = torch.tensor([0.0, -1.0, 1.0])
        conv.bias[0] = -0.15
        conv.weight[1, :, 2, 2] = torch.tensor([-1.0, -1.0, -1.0])
        conv.bias[1] = 0.15
        bn.running_mean.zero_()
        bn.running_var.fill_(1.0)
        bn.weight.fill_(1.0)
        bn.eps = 0.0
        linear = network.classifier[-1]
        channel = 0 if reads == "stain" else 1
        linear.weight[1, channel] = 100.0
        linear.bias[1] = -0.5  # Parasitized when the channel's mean exceeds 0.005
    return network


@pytest.mark.parametrize(
    "reads, flips, stays", [("stain", "stain", "background"), ("background", "background", "stain")]
)
def test_erasing_the_region_a_network_reads_flips_it_and_another_does_not(
    tmp_path: Path, reads: str, flips: str, stays: str
) -> None:
    path = tmp_path / "model_malaria_last.pt"
    save_checkpoint(
        {
            "net_state_dict": hand_set(reads).state_dict(),
            "image_size": SIZE,
            "class_names": ["Uninfected", "Parasitized"],
        },
        path,
    )
    model = load_model(path)
    pictures = torch.stack([cell(), cell()])
    flipped = erase(model, pictures, flips)
    assert flipped.before.predictions.tolist() == [1, 1]
    assert flipped.after.predictions.tolist() == [0, 0] and bool(flipped.changed.all())
    kept = erase(model, pictures, stays)
    assert kept.after.predictions.tolist() == [1, 1] and not bool(kept.changed.any())
    # The edited pictures keep their size and names, and the maps explain the class explained before.
    assert kept.after.inputs.images.shape == pictures.shape and kept.after.inputs.names == kept.before.inputs.names
    assert torch.equal(kept.after.class_index, kept.before.class_index)


def test_a_mask_file_removes_its_non_black_pixels(tmp_path: Path) -> None:
    mask = np.zeros((64, 64), dtype=np.uint8)
    mask[:32] = 255
    Image.fromarray(mask).save(tmp_path / "top.png")
    read = read_mask(tmp_path / "top.png", SIZE)
    assert read.shape == (SIZE, SIZE) and bool(read[:16].all()) and not bool(read[16:].any())
    path = tmp_path / "model.pt"
    save_checkpoint({"net_state_dict": hand_set("stain").state_dict(), "image_size": SIZE}, path)
    erased = erase(load_model(path), cell()[None], tmp_path / "top.png")
    assert erased.region == "top.png" and torch.equal(erased.masks[0], read)
    assert float(erased.removed_fraction[0]) == pytest.approx(0.5)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_single_erase_draws_before_and_after(tmp_path: Path) -> None:
    pictures = sorted((REPO / "data" / "demo" / "Parasitized").glob("*.png"))[:2]
    result = run_cli(
        "single",
        "--image",
        *pictures,
        "--erase",
        "stain",
        "--out",
        tmp_path,
        "--save-npz",
        "--device",
        "cpu",
        script="where_to_look.py",
    )
    assert result.returncode == 0, result.stderr
    assert "removing the stain changed the prediction of" in result.stdout
    for picture in pictures:
        png = tmp_path / f"{picture.stem}_erase_stain.png"
        assert png.is_file()
        numbers = np.load(png.with_suffix(".npz"))
        assert numbers["mask"].shape == (128, 128) and numbers["mask"].any()
        assert numbers["heatmap_before"].shape == numbers["heatmap_after"].shape == (128, 128)
        assert {"probabilities_before", "probabilities_after", "out_of_distribution", "ood_score"} <= set(numbers.files)
    bad = run_cli("single", "--image", pictures[0], "--erase", "sky", "--out", tmp_path, script="where_to_look.py")
    assert bad.returncode == 2 and "error: --erase sky" in bad.stderr
