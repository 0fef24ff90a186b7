"""The intervention test: filling a region from the cell around it, the matched control, and what models do then."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from wtl.evaluation import driver
from wtl.metrics import intervention
from wtl.metrics.stain import cell_mask, stain_mask

SIZE = 64
PINK = torch.tensor([220.0, 150.0, 170.0]) / 255
PURPLE = torch.tensor([70.0, 20.0, 90.0]) / 255
CLASSES = ["Uninfected", "Parasitized"]


def cell(blob: tuple[int, int] | None = (22, 30), seed: int = 0) -> torch.Tensor:
    """A pink disc on black (3, SIZE, SIZE) in [0, 1] with a little noise, and a purple blob of radius 5 at `blob`."""
    generator = torch.Generator().manual_seed(seed)
    rows, cols = torch.meshgrid(torch.arange(SIZE), torch.arange(SIZE), indexing="ij")
    disc = (rows - 32) ** 2 + (cols - 32) ** 2 <= 27**2
    image = torch.zeros(3, SIZE, SIZE)
    image[:, disc] = PINK[:, None]
    if blob is not None:
        spot = (rows - blob[0]) ** 2 + (cols - blob[1]) ** 2 <= 5**2
        image[:, spot] = PURPLE[:, None]
    noise = (torch.rand(3, SIZE, SIZE, generator=generator) - 0.5) * 0.04
    return (image + noise * disc).clamp(0, 1)


def purple(images: torch.Tensor) -> torch.Tensor:
    """(B, H, W) 1.0 where a pixel is Giemsa-purple (green well below red and blue), else 0.0."""
    return (images[:, 1] < 0.6 * (images[:, 0] + images[:, 2]) / 2).float() * (images.amax(1) > 0.15).float()


class Reader(nn.Module):
    """A two-class model that reads only the pixels of `window`: Parasitized by how many of them are purple."""

    def __init__(self, window: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("window", window.float())
        self.scale = nn.Parameter(torch.tensor(0.5))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        seen = (purple(images) * self.window).sum((1, 2))
        # Also the window's mean brightness, so that a model that sees no purple still has a graded output.
        shade = (images.mean(1) * self.window).sum((1, 2)) / self.window.sum().clamp_min(1)
        z = self.scale * (seen - 20) + shade
        return torch.stack([-z, z], dim=1)


def test_fill_replaces_the_region_with_the_cells_own_colour_and_nothing_else():
    images = torch.stack([cell(), cell(seed=1)])
    masks = torch.stack([stain_mask(image) for image in images])
    assert int(masks[0].sum()) > 40  # the blob is found as stain
    regions = intervention.dilate(masks, intervention.DILATION_PX)
    filled = intervention.fill_from_surroundings(images, regions)
    outside = ~regions[:, None].expand_as(images)
    assert torch.equal(filled[outside], images[outside])  # not a pixel outside the region changes
    inside = filled.permute(0, 2, 3, 1)[regions]
    assert torch.allclose(inside.mean(0), PINK, atol=0.03)  # the blob is gone: pink where it was
    assert int(stain_mask(filled[0]).sum()) == 0
    # The black background never bleeds in: a region touching the cell's edge is filled with pink too.
    edge = torch.zeros(1, SIZE, SIZE, dtype=torch.bool)
    edge[0, 28:36, 2:12] = True
    fixed = intervention.fill_from_surroundings(images[:1], edge)
    where = edge[0] & cell_mask(images[0])
    assert torch.allclose(fixed[0][:, where].mean(1), PINK, atol=0.03)


def test_the_control_has_the_regions_shape_and_area_elsewhere_in_the_same_cell():
    image = cell()
    region = intervention.dilate(stain_mask(image)[None], 3)[0] & cell_mask(image)
    control, moved = intervention.control_region(region, cell_mask(image))
    assert moved and int(control.sum()) == int(region.sum())
    assert not bool((control & intervention.dilate(region[None], 3)[0]).any())  # away from it
    assert bool(control[cell_mask(image)].sum() == control.sum())  # inside the cell
    # Its shape is the region's: the same pattern, moved.
    rows, cols = torch.nonzero(region, as_tuple=True)
    crows, ccols = torch.nonzero(control, as_tuple=True)
    assert sorted(zip((rows - rows.min()).tolist(), (cols - cols.min()).tolist())) == sorted(
        zip((crows - crows.min()).tolist(), (ccols - ccols.min()).tolist())
    )
    # On the far side of the cell from the blob (the blob is up and left of the centre).
    assert float(crows.float().mean()) > 32 and float(ccols.float().mean()) > 32


def test_a_model_that_ignores_the_region_shows_no_drop_and_one_that_reads_only_it_flips():
    images = torch.stack([cell(seed=s) for s in range(4)])
    masks = torch.stack([stain_mask(image) for image in images])
    region = intervention.intervention_regions(images, masks).truth
    window = region.any(0)  # the (same) blob's dilated region in every picture
    classes = torch.ones(4, dtype=torch.long)
    for model, reads_region in ((Reader(~window), False), (Reader(window), True)):
        with torch.no_grad():
            logits = model(images)
        before = logits.softmax(1)[:, 1]
        scores = intervention.intervention_regions(images, masks)
        after, predicted = intervention.probabilities_after(model, images, scores.truth, classes, scores.cells)
        control, control_predicted = intervention.probabilities_after(
            model, images, scores.control, classes, scores.cells
        )
        if reads_region:
            assert bool((logits.argmax(1) == 1).all()) and bool((predicted == 0).all())  # every prediction flips
            assert float((before - after).min()) > 0.9
            assert torch.equal(control_predicted, logits.argmax(1))  # the control elsewhere changes nothing
            assert float((before - control).abs().max()) < 1e-6
        else:
            assert torch.allclose(after, before, atol=1e-7)  # removing what it never reads: no drop at all


def test_evaluate_reports_the_intervention_and_names_the_fill():
    # Six stained and six clean cells; the model reads only where the blob is.
    images = [cell(seed=s) for s in range(6)] + [cell(blob=None, seed=10 + s) for s in range(6)]
    labels = [1] * 6 + [0] * 6
    masks = torch.stack([stain_mask(image) for image in images[:6]])
    window = intervention.intervention_regions(torch.stack(images[:6]), masks).truth.any(0)

    class Loaded:
        network = Reader(window).eval()
        class_names = CLASSES
        image_size = SIZE

    # No map method (the Reader is no CNN): the ground truth and the control alone.
    result = driver.evaluate(Loaded(), list(zip(images, labels)), [], progress=False)
    data = result.to_json()["intervention"]
    assert data["images"] == 6 and "diffusion" in data["fill"] and data["dilation_px"] == intervention.DILATION_PX
    assert data["truth"]["flipped"] == 1.0 and data["truth"]["mean_drop"] > 0.9
    assert data["control"]["flipped"] == 0.0 and abs(data["control"]["mean_drop"]) < 1e-6
    low, high = data["truth"]["drop_minus_control_ci95"]
    assert low > 0.5
    assert np.isnan(result.intervention.before[6:]).all()  # clean cells are not intervened on
