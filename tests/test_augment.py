"""Training augmentation: faces keep their up, cells may turn, every choice is seeded and stays in [0, 1]."""

from __future__ import annotations

import pytest
import torch

from wtl.data import augment


def gradient_faces(n: int = 16, size: int = 12) -> torch.Tensor:
    """(n, 3, size, size) pictures bright at the top and dark at the bottom, with a bright left column."""
    rows = torch.linspace(1.0, 0.0, size)[:, None].expand(size, size).clone()
    rows[:, 0] = 1.0
    return rows.expand(n, 3, size, size).clone()


def generator(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_auto_is_flips_for_faces_and_the_square_symmetries_for_cells() -> None:
    assert augment.for_dataset("auto", "gender") is augment.horizontal_flip
    assert augment.for_dataset("auto", "malaria") is augment.dihedral
    assert augment.for_dataset("auto", "folder") is augment.dihedral
    assert augment.for_dataset("faces", "gender") is augment.faces
    assert augment.for_dataset("none", "gender") is None
    with pytest.raises(ValueError, match="unknown augmentation"):
        augment.for_dataset("turns", "gender")


def test_horizontal_flip_mirrors_some_images_and_never_turns_one() -> None:
    images = gradient_faces()
    out = augment.horizontal_flip(images, generator())
    mirrored = [bool(torch.equal(o, i.flip(-1))) for o, i in zip(out, images)]
    kept = [bool(torch.equal(o, i)) for o, i in zip(out, images)]
    assert all(m or k for m, k in zip(mirrored, kept)) and any(mirrored) and any(kept)
    # The top stays on top: every row keeps its brightness, whatever was mirrored.
    torch.testing.assert_close(out.mean(dim=-1), images.mean(dim=-1))


@pytest.mark.parametrize("choice", ["flip", "faces"])
def test_face_augmentations_keep_the_face_upright(choice: str) -> None:
    images = gradient_faces()
    out = augment.for_dataset(choice, "gender")(images, generator(1))  # type: ignore[misc]
    assert out.shape == images.shape and out.min() >= 0.0 and out.max() <= 1.0
    top, bottom = out[..., :4, :].mean(dim=(1, 2, 3)), out[..., -4:, :].mean(dim=(1, 2, 3))
    assert bool((top > bottom + 0.3).all()), "a face was turned upside down or sideways"


def test_the_cell_augmentation_also_turns() -> None:
    images = gradient_faces(64)
    out = augment.dihedral(images, generator(2))
    top, bottom = out[..., :4, :].mean(dim=(1, 2, 3)), out[..., -4:, :].mean(dim=(1, 2, 3))
    assert bool((top < bottom).any()), "a cell has no up: some should come out turned"


@pytest.mark.parametrize("choice", ["dihedral", "flip", "faces"])
def test_the_same_seed_draws_the_same_augmentation(choice: str) -> None:
    images = torch.rand((8, 3, 12, 12), generator=generator(3))
    function = augment.for_dataset(choice, "gender")
    assert function is not None
    torch.testing.assert_close(function(images, generator(4)), function(images, generator(4)))
    assert not torch.equal(function(images, generator(4)), function(images, generator(5)))
