"""`gender100` and `overlay`: the maps of N test faces per gender averaged over the mean face, and blended."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from wtl.cli import common

SUMMARY = "the heatmaps of N test faces per gender averaged over the mean face, and their overlay"
EXAMPLE = "python where_to_look.py gender100 --data-dir ~/celeba --count 100"
OVERLAY_SUMMARY = "blend the male and female Gender100 maps over the mean face"
OVERLAY_EXAMPLE = "python where_to_look.py overlay --image outputs/gender100_male.npz outputs/gender100_female.npz"


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The flags of `gender100`."""
    p.add_argument("--data-dir", type=Path, help="the gender data set (Dataset/ or its parent)")
    p.add_argument("--count", type=common.positive, default=100, help="faces per gender (default 100)")
    p.add_argument("--seed", type=int, default=0, help="seed of the faces' pick (default 0)")
    p.add_argument(
        "--stability",
        action="store_true",
        help="also average as many other test faces and print how well the two maps agree (Spearman's rho)",
    )
    common.model_flags(p)
    common.map_flags(p)
    common.output_flags(p)


def add_overlay_arguments(p: argparse.ArgumentParser) -> None:
    """The flags of `overlay`."""
    p.add_argument(
        "--image",
        type=Path,
        nargs="+",
        help="gender100's results: gender100_male.npz and gender100_female.npz, gender100.npz, or the PNGs beside them",
    )
    common.output_flags(p)


def _print_regions(shares: dict[str, dict[str, dict[str, Any]]], resampled: dict[str, Any]) -> None:
    """Where each gender's averaged map lies: its share and density, with the density's interval, per face region."""
    from wtl.metrics.bootstrap import unit_count

    def bracketed(bounds: list[float] | None) -> str:
        return "" if bounds is None else f"[{bounds[0]:.2f}, {bounds[1]:.2f}]"

    genders = list(shares)
    regions = list(shares[genders[0]])
    header = f"\n{'region':<17}{'area':>7}" + "".join(
        f"{g + ' share':>14}{'density':>9}{'[95 %]':^14}" for g in genders
    )
    print(header.rstrip())
    for region in regions:
        row = f"{region:<17}{shares[genders[0]][region]['area']:>7.1%}"
        for g in genders:
            figures = shares[g][region]
            row += f"{figures['share']:>14.1%}{figures['density']:>9.2f} {bracketed(figures.get('density_ci95')):<13}"
        print(row.rstrip())
    counts = ", ".join(f"{unit_count(n, resampled['unit'])} ({g})" for g, n in resampled["units"].items())
    print(
        "(share: of the averaged map's total; density: share / area, above 1 = more than an average pixel; "
        f"[95 % interval]: bootstrap over {counts}, {resampled['replicates']} replicates)\n"
    )


def run(args: argparse.Namespace) -> list[Path]:
    """Average the maps of --count test faces per gender; draw them, their regions and their overlay."""
    from wtl.errors import UsageError
    from wtl.evaluation import gender100
    from wtl.metrics import faces
    from wtl.plot import gender as drawing
    from wtl.plot.outputs import Outputs
    from wtl.runtime import pick_device

    if args.data_dir is None:
        raise UsageError("gender100 needs the gender data set: pass --data-dir PATH")
    device = pick_device(args.device)
    model = common.open_model(args.model, "gender", args.models_dir, device, plain=common.plain_of(args))
    gender100.check_gender_model(model)
    class_index = common.class_index_of(args.class_, model.class_names)
    maps = gender100.gender100_maps(
        model, args.data_dir, args.count, args.seed, class_index, args.method, args.batch_size
    )
    outputs = Outputs(args.out, args.save_npz)
    look = common.look_of(args)
    drawing.render_gender100(maps, outputs, model, look)
    shares = gender100.region_shares(maps, model.image_size, model.preprocess, seed=args.seed)
    resampled = gender100.resampling(maps)
    _print_regions(shares, resampled)
    numbers = {"regions": faces.REGIONS, "preprocess": model.preprocess, "shares": shares, "bootstrap": resampled}
    outputs.json(numbers, "gender100_regions")
    drawing.render_regions(maps, shares, model, outputs)
    if args.stability:
        gender100.stability(model, maps, args.data_dir, args.seed, class_index, args.method, args.batch_size)
    face = drawing.display_face(
        (maps.faces["Male"] + maps.faces["Female"]) / 2, drawing.aspect_of(model, maps.files["Male"])
    )
    drawing.render_overlay(maps.heatmaps["Male"], maps.heatmaps["Female"], face, outputs, model.path.name, look)
    return outputs.written


def run_overlay(args: argparse.Namespace) -> list[Path]:
    """Blend two Gender100 results (their npz files, or the PNGs beside them) over the mean face."""
    from wtl.errors import UsageError
    from wtl.evaluation.gender100 import read_gender100
    from wtl.plot import gender as drawing
    from wtl.plot.outputs import Outputs

    if not args.image:
        raise UsageError("overlay needs gender100's results: --image gender100_male.npz gender100_female.npz")
    male, female, face, aspect = read_gender100(args.image)
    outputs = Outputs(args.out, args.save_npz)
    look = common.look_of(args)
    source = ", ".join(p.name for p in args.image)
    drawing.render_overlay(male, female, drawing.display_face(face, aspect), outputs, source, look)
    return outputs.written
