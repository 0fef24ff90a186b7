"""Whole-process cost of the visualizer: the CLI against a bare script doing the same work.

    python benchmarks/cli_start.py                  # the bundled models, generated faces
    python benchmarks/cli_start.py --repeats 7 --faces ~/celeba

Interactive use is a series of short runs, so start-up counts. For each case the
candidate is `python where_to_look.py ...` as a user types it; the floor is a bare
script that imports torch, matplotlib and Pillow, loads the same checkpoint, decodes
the same pictures, runs the same forward passes and saves one figure. Both run as
fresh processes, alternating, --repeats times; the ratio of the medians is printed.
Target: <= 1.3 for `single` on one cell and for `gender100` on 200 faces. And `--help`, which
must not import torch: under 0.2 s in all, printed beside a bare interpreter's start (`python -c pass`).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
TARGET = 1.3
HELP_TARGET_S = 0.2

# The floor for `single`: the same work with nothing but torch, matplotlib and Pillow.
# What both floors start with: the three libraries, and the checkpoint loaded into its network.
BARE_START = """
import sys
from pathlib import Path
import numpy as np
import torch
from matplotlib.figure import Figure
from PIL import Image
sys.path.insert(0, {repo!r})
from model_network import Network
checkpoint = torch.load({model!r}, map_location="cpu", weights_only=True)
network = Network(2)
network.load_state_dict(checkpoint["net_state_dict"])
network.eval()
"""

BARE_SINGLE = (
    BARE_START
    + """
picture = Image.open({image!r}).convert("RGB")
x = torch.from_numpy(np.array(picture.resize((128, 128), Image.Resampling.BILINEAR))).permute(2, 0, 1)
with torch.no_grad():
    logits, features = network(x[None].float() / 255, return_cam=True)
    cam = torch.einsum("bkhw,k->bhw", features, network.classifier[-1].weight[int(logits.argmax())])
fig = Figure()
ax = fig.subplots()
ax.imshow(np.asarray(picture))
ax.imshow(cam[0].numpy(), alpha=0.5, extent=(0, picture.width, picture.height, 0))
fig.savefig({out!r})
"""
)

# The floor for `gender100`: decode every face, forward in batches of 32, one figure.
BARE_GENDER = (
    BARE_START
    + """
def load(path):
    picture = Image.open(path).convert("RGB")
    side = min(picture.size)
    left, top = (picture.width - side) // 2, (picture.height - side) // 2
    picture = picture.crop((left, top, left + side, top + side)).resize((128, 128), Image.Resampling.BILINEAR)
    return torch.from_numpy(np.array(picture)).permute(2, 0, 1).float() / 255
total = torch.zeros(128, 128)
for gender in ("Female", "Male"):
    paths = sorted((Path({faces!r}) / "Dataset" / "Test" / gender).iterdir())[:{count}]
    for start in range(0, len(paths), 32):
        batch = torch.stack([load(p) for p in paths[start : start + 32]])
        with torch.no_grad():
            total += network(batch, return_cam=True)[1].mean(1).sum(0).repeat_interleave(16, 0).repeat_interleave(16, 1)
fig = Figure()
fig.subplots().imshow(total.numpy())
fig.savefig({out!r})
"""
)


def make_faces(root: Path, count: int) -> Path:
    """`count` generated 178 x 218 JPEG 'faces' per gender in the Kaggle layout."""
    rng = np.random.default_rng(0)
    for gender in ("Female", "Male"):
        folder = root / "Dataset" / "Test" / gender
        folder.mkdir(parents=True)
        for i in range(count):
            pixels = rng.integers(60, 200, (218, 178, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(folder / f"{i:05d}_{i:06d}.jpg", quality=90)
    return root


def timed(command: list[str]) -> float:
    """Seconds a fresh process takes, from start to exit; fails loudly if it fails."""
    env = dict(os.environ, MPLBACKEND="Agg")
    start = time.perf_counter()
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
    taken = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{result.stderr[-2000:]}")
    return taken


def compare(name: str, candidate: list[str], floor: list[str], repeats: int) -> float:
    """Alternate the two processes `repeats` times; print and return the ratio of the medians."""
    timed(candidate)  # warm the file cache for both
    timed(floor)
    times: dict[str, list[float]] = {"cli": [], "bare": []}
    for repeat in range(repeats):
        order = [("cli", candidate), ("bare", floor)]
        for key, command in order if repeat % 2 == 0 else reversed(order):
            times[key].append(timed(command))
    cli, bare = statistics.median(times["cli"]), statistics.median(times["bare"])
    ratio = cli / bare
    verdict = "ok" if ratio <= TARGET else f"ABOVE the target {TARGET}"
    print(f"{name:<34} where_to_look.py {cli:6.2f} s   bare script {bare:6.2f} s   ratio {ratio:5.2f}  ({verdict})")
    return ratio


def main(argv: list[str] | None = None) -> int:
    """Time `single` on one cell and `gender100` on 2 x --count faces against their bare scripts."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=5, help="runs of each process (default 5)")
    p.add_argument("--count", type=int, default=100, help="faces per gender for gender100 (default 100)")
    p.add_argument("--faces", type=Path, help="a gender data set to use (default: generated faces)")
    p.add_argument("--malaria-model", type=Path, default=REPO / "models" / "bundled" / "model_malaria_last.pt")
    p.add_argument("--gender-model", type=Path, default=REPO / "models" / "bundled" / "model_gender_last.pt")
    args = p.parse_args(argv)
    python = sys.executable
    help_times = [timed([python, "where_to_look.py", "--help"]) for _ in range(args.repeats)]
    bare_times = [timed([python, "-c", "pass"]) for _ in range(args.repeats)]
    helped, bare = statistics.median(help_times), statistics.median(bare_times)
    verdict = "ok" if helped < HELP_TARGET_S else f"ABOVE the target {HELP_TARGET_S} s"
    print(f"{'--help':<34} where_to_look.py {helped:6.2f} s   python -c pass {bare:6.2f} s   ({verdict})")
    cell = sorted((REPO / "data" / "demo" / "Parasitized").iterdir())[0]
    with tempfile.TemporaryDirectory(prefix="cli-start-") as folder:
        work = Path(folder)
        bare_single = work / "bare_single.py"
        bare_single.write_text(
            BARE_SINGLE.format(repo=str(REPO), model=str(args.malaria_model), image=str(cell), out=str(work / "b.png"))
        )
        compare(
            "single, one cell",
            [python, "where_to_look.py", "single", "--image", str(cell), "--model", str(args.malaria_model)]
            + ["--out", str(work / "cli")],
            [python, str(bare_single)],
            args.repeats,
        )
        faces = args.faces or make_faces(work / "faces", args.count)
        bare_gender = work / "bare_gender.py"
        bare_gender.write_text(
            BARE_GENDER.format(
                repo=str(REPO),
                model=str(args.gender_model),
                faces=str(faces),
                count=args.count,
                out=str(work / "g.png"),
            )
        )
        compare(
            f"gender100, {2 * args.count} faces",
            [python, "where_to_look.py", "gender100", "--data-dir", str(faces), "--count", str(args.count)]
            + ["--model", str(args.gender_model), "--out", str(work / "cli")],
            [python, str(bare_gender)],
            args.repeats,
        )
    print(f"machine: {os.cpu_count()} CPUs; python {sys.version.split()[0]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
