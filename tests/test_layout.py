"""The package's shape: imports run downward, one registry feeds the CLI, --help needs no torch, errors are sorted.

Also the Python API against the CLI (the same arrays), --batch-size honoured by every picture command,
and `pip install .` of a clone giving `import wtl` and the two console scripts anywhere.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import REPO, SUBPROCESS_THREADS, build_gender, throwaway_clone

import where_to_look
from wtl.cli import main as cli_main
from wtl.maps import fusion, gradcam, registry
from wtl.nets.seed import Network

ENV = dict(os.environ, MPLBACKEND="Agg", PYTHONUNBUFFERED="1", **SUBPROCESS_THREADS)
DEMO = REPO / "data" / "demo"


def _subparser(name: str) -> argparse.ArgumentParser:
    action = next(a for a in where_to_look.build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return action.choices[name]


def _choices(command: str, dest: str) -> list[str]:
    return list(next(a for a in _subparser(command)._actions if a.dest == dest).choices)


# --------------------------------------------------------------------------- one place per decision


def test_the_cli_reads_its_choices_from_the_registry() -> None:
    assert _choices("single", "method") == _choices("multi", "method") == list(registry.METHODS)
    assert _choices("evaluate", "methods") == list(registry.METHODS)
    assert _choices("multi", "fuse") == list(registry.FUSIONS)
    # Every name of the registry has its implementation, and nothing else does.
    assert tuple(gradcam.METHODS) == registry.GRADIENT_METHODS == tuple(m for m in registry.METHODS if m != "cam")
    assert set(fusion.FUSION_RULES) == set(registry.FUSIONS)
    assert registry.DEFAULT_FUSION in registry.FUSIONS and registry.DEFAULT_METHOD in registry.METHODS


def test_help_answers_without_importing_torch() -> None:
    code = (
        "import sys, contextlib, io\n"
        "import where_to_look\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        "    try:\n"
        "        where_to_look.main(['--help'])\n"
        "    except SystemExit:\n"
        "        pass\n"
        "heavy = sorted(m for m in ('torch', 'numpy', 'matplotlib', 'PIL') if m in sys.modules)\n"
        "print(','.join(heavy))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, env=ENV)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == ""


def _lint_imports(root: Path) -> subprocess.CompletedProcess[str]:
    lint = Path(sys.executable).with_name("lint-imports")
    return subprocess.run(
        [str(lint), "--config", str(root / "pyproject.toml"), "--no-cache"],
        cwd=root,
        capture_output=True,
        text=True,
        env=dict(ENV, PYTHONPATH=str(root)),
    )


def test_the_layers_contract_holds_and_an_upward_import_breaks_it(tmp_path: Path) -> None:
    shutil.copytree(REPO / "wtl", tmp_path / "wtl", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    kept = _lint_imports(tmp_path)
    assert kept.returncode == 0 and "1 kept, 0 broken" in kept.stdout, kept.stdout + kept.stderr
    # The network module reaching up into the command line: the contract must catch it.
    seed = tmp_path / "wtl" / "nets" / "seed.py"
    seed.write_text(seed.read_text() + "\nfrom wtl.cli import common  # noqa: E402, F401\n")
    broken = _lint_imports(tmp_path)
    assert broken.returncode != 0 and "BROKEN" in broken.stdout
    assert "wtl.nets.seed -> wtl.cli.common" in broken.stdout


# --------------------------------------------------------------------------- errors: one line, or a traceback


def test_a_bug_inside_the_network_keeps_its_traceback(monkeypatch, capsys, tmp_path: Path) -> None:
    def boom(self: Network, x: torch.Tensor, return_cam: bool = False) -> torch.Tensor:
        raise RuntimeError("boom inside the network")

    monkeypatch.setattr(Network, "forward", boom)
    code = cli_main.main(["single", "--image", str(next((DEMO / "Parasitized").iterdir())), "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert code not in (0, 2)
    assert "Traceback (most recent call last)" in err and "RuntimeError: boom inside the network" in err
    assert not any(line.startswith("error:") for line in err.splitlines())


def test_bad_input_still_gets_one_line(capsys, tmp_path: Path) -> None:
    code = cli_main.main(["single", "--image", str(tmp_path / "missing.png"), "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and err.strip().startswith("error:") and "Traceback" not in err


# --------------------------------------------------------------------------- --batch-size


class _Batches:
    """Counts the batches through the networks: the sizes of the batches their first convolution sees."""

    def __init__(self) -> None:
        self.sizes: list[int] = []

    def __call__(self, module: torch.nn.Module, args: tuple) -> None:
        if isinstance(module, torch.nn.Conv2d) and module.in_channels == 3:
            self.sizes.append(int(args[0].shape[0]))


def _count_batches(monkeypatch, argv: list[str]) -> list[int]:
    counter = _Batches()
    handle = torch.nn.modules.module.register_module_forward_pre_hook(counter)
    try:
        assert cli_main.main(argv) == 0
    finally:
        handle.remove()
    return counter.sizes


def test_batch_size_is_honoured_by_single_multi_and_gender100(monkeypatch, tmp_path: Path) -> None:
    cells = DEMO / "Parasitized"  # 10 cells
    single = _count_batches(monkeypatch, ["single", "--image", str(cells), "--batch-size", "4", "--out", str(tmp_path)])
    # Each batch twice: explained, then judged against the model's training pictures (metrics.ood).
    assert single == [4, 4, 4, 4, 2, 2]
    multi = ["multi", "--loss", "every", "--image", str(cells), "--batch-size", "3", "--out", str(tmp_path)]
    assert _count_batches(monkeypatch, multi) == [3, 3, 3, 3, 3, 3, 1, 1]
    faces = build_gender(tmp_path / "faces")  # 4 test faces per gender
    model = REPO / "models" / "bundled" / "model_gender_last.pt"
    gender = ["gender100", "--data-dir", str(faces), "--model", str(model), "--count", "3", "--batch-size", "2"]
    assert _count_batches(monkeypatch, [*gender, "--out", str(tmp_path / "g")]) == [2, 1, 2, 1]


# --------------------------------------------------------------------------- the API and the CLI agree


def test_every_name_import_wtl_lists_is_the_api_module_s_own() -> None:
    # wtl/__init__.py lists the API once and loads it lazily from wtl.api.
    import wtl
    from wtl import api

    assert set(wtl.__all__) <= set(dir(wtl))
    for name in wtl.__all__:
        assert getattr(wtl, name) is getattr(api, name)
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        _ = wtl.nope


@pytest.mark.slow
def test_the_api_gives_the_arrays_single_and_multi_save(tmp_path: Path) -> None:
    import wtl

    pictures = sorted((DEMO / "Parasitized").iterdir())[:3] + sorted((DEMO / "Uninfected").iterdir())[:2]
    for command, model_name, blocks in (("single", "malaria", "last"), ("multi", "malaria-every", "every")):
        out = tmp_path / command
        flags = ["--loss", "every"] if command == "multi" else []
        run = subprocess.run(
            [sys.executable, "where_to_look.py", command, *flags, "--image", *map(str, pictures)]
            + ["--save-npz", "--out", str(out)],
            cwd=REPO,
            capture_output=True,
            text=True,
            env=ENV,
        )
        assert run.returncode == 0, run.stderr
        result = wtl.explain(wtl.load_model(model_name), pictures, blocks=blocks)
        for i, picture in enumerate(pictures):
            suffix = "single" if command == "single" else "multi_model_malaria_every_multi_loss"
            with np.load(out / f"{picture.stem}_{suffix}.npz") as npz:
                np.testing.assert_array_equal(npz["logits"], result.logits[i].numpy())
                np.testing.assert_array_equal(npz["cam"], result.cam[i].numpy())
                np.testing.assert_array_equal(npz["heatmap"], result.heatmap[i].numpy())
                # Both judge the picture against the model's training pictures alike.
                assert result.ood_score is not None and result.out_of_distribution is not None
                assert float(npz["ood_score"]) == float(result.ood_score[i])
                assert bool(npz["out_of_distribution"]) == bool(result.out_of_distribution[i])
                if blocks == "every":
                    np.testing.assert_array_equal(npz["heatmap_fused"], result.fused[i].numpy())
                    for b, heat in enumerate(result.heatmaps, start=1):
                        np.testing.assert_array_equal(npz[f"heatmap_block{b}"], heat[i].numpy())


# --------------------------------------------------------------------------- installed as a package


def _site_packages(python: Path) -> Path:
    code = "import sysconfig; print(sysconfig.get_paths()['purelib'])"
    return Path(subprocess.run([str(python), "-c", code], capture_output=True, text=True, check=True).stdout.strip())


@pytest.mark.slow
@pytest.mark.parametrize("editable", [False, True], ids=["install", "editable"])
def test_pip_install_gives_wtl_and_both_commands_anywhere(tmp_path: Path, editable: bool) -> None:
    clone = throwaway_clone(tmp_path / "clone")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    # The new environment borrows this one's torch & co. (installing them again is a download), not wtl:
    # this checkout is not installed here, and the test runs from another folder than the clone. It
    # borrows pip and setuptools too: a venv's own setuptools (65 on Python 3.11) cannot build a wheel
    # without the separate `wheel`, and nothing may be downloaded.
    (_site_packages(python) / "borrowed.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    install = [str(python), "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation"]
    install += ["-e", str(clone)] if editable else [str(clone)]
    done = subprocess.run(install, capture_output=True, text=True, env=ENV, timeout=600)
    assert done.returncode == 0, done.stderr
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    code = (
        "import wtl\n"
        "from wtl import resources\n"
        "cell = sorted((resources.demo_dir() / 'Parasitized').iterdir())[0]\n"
        "result = wtl.explain(wtl.load_model('malaria'), cell)\n"
        "print(wtl.__file__)\n"
        "print(resources.in_checkout(), result.class_names[int(result.predictions[0])], tuple(result.heatmap.shape),"
        " bool(result.out_of_distribution[0]))\n"
    )
    shown = subprocess.run([str(python), "-c", code], cwd=elsewhere, capture_output=True, text=True, env=ENV)
    assert shown.returncode == 0, shown.stderr
    where, facts = shown.stdout.strip().splitlines()[-2:]
    assert Path(where).is_relative_to(clone if editable else venv)
    # The bundled statistics travel with the package: a demo cell is judged, and like the training cells.
    assert facts == f"{editable} Parasitized (1, 128, 128) False"
    cell = sorted((clone / "data" / "demo" / "Parasitized").iterdir())[0]
    for script, argv in (
        ("where-to-look", ["single", "--image", str(cell), "--out", str(elsewhere / "out")]),
        ("wtl-train", ["--help"]),
    ):
        ran = subprocess.run(
            [str(venv / "bin" / script), *argv], cwd=elsewhere, capture_output=True, text=True, env=ENV
        )
        assert ran.returncode == 0, ran.stderr
    assert (elsewhere / "out" / f"{cell.stem}_single.png").is_file()


# --------------------------------------------------------------------------- the notebook


@pytest.mark.slow
def test_the_quickstart_notebook_runs(tmp_path: Path, monkeypatch) -> None:
    import nbformat
    from nbclient import NotebookClient

    monkeypatch.setenv("PYTHONPATH", str(REPO))  # the kernel imports this checkout's wtl
    monkeypatch.setenv("MPLBACKEND", "Agg")
    for name, value in SUBPROCESS_THREADS.items():  # the kernel is a subprocess like the CLIs: one thread
        monkeypatch.setenv(name, value)
    notebook = nbformat.read(REPO / "examples" / "quickstart.ipynb", as_version=4)
    NotebookClient(
        notebook, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    ).execute()
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    text = "".join(o.get("text", "") for o in outputs)
    assert "pictures: 10" in text and "fused CAM: peak within 8 px" in text
    assert len(list((tmp_path / "outputs" / "quickstart").glob("*.png"))) == 10


# --------------------------------------------------------------------------- what explain takes


def test_explain_takes_files_folders_pil_images_and_tensors_alike() -> None:
    from PIL import Image

    import wtl
    from wtl.data.images import load_image

    model = wtl.load_model("malaria")
    cells = sorted((DEMO / "Parasitized").iterdir())[:3]
    by_file = wtl.explain(model, cells)
    by_folder = wtl.explain(model, DEMO / "Parasitized")
    assert len(by_folder) == 10 and torch.equal(by_folder.heatmap[:3], by_file.heatmap)
    with Image.open(cells[0]) as picture:
        by_pil = wtl.explain(model, picture.copy())
    torch.testing.assert_close(by_pil.logits, by_file.logits[:1])
    batch = torch.stack([load_image(c, model.image_size, model.preprocess) for c in cells])
    by_tensor = wtl.explain(model, batch)
    torch.testing.assert_close(by_tensor.heatmap, by_file.heatmap)
    assert by_tensor.inputs.names == ["image_0", "image_1", "image_2"] and by_file.inputs.names[0] == cells[0].stem
    # One class for all, or one per picture; batches of any size give the same maps.
    parasitized, uninfected = wtl.explain(model, cells, class_index=1), wtl.explain(model, cells, class_index=0)
    mixed = wtl.explain(model, cells, class_index=torch.tensor([0, 1, 0]), batch_size=2)
    assert mixed.class_index.tolist() == [0, 1, 0]
    torch.testing.assert_close(mixed.cam, torch.stack([uninfected.cam[0], parasitized.cam[1], uninfected.cam[2]]))
    with pytest.raises(ValueError, match="blocks"):
        wtl.explain(model, cells, blocks="some")
