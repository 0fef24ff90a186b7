"""Training in several processes: torchrun + DistributedDataParallel on the CPU (gloo), --amp, --compile.

The end-to-end tests launch real `torchrun --standalone --nproc_per_node=2 model_main.py`
runs on a tiny generated malaria set; the one-step equivalence test spawns a gloo
group of two in-process workers and compares with a single process.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from conftest import REPO, error_lines, run_cli
from torch.utils.data import DataLoader, TensorDataset

import model_main
from model_data import make_dataset
from model_network import build_network
from model_trainer import Trainer
from wtl.checkpoints import loading
from wtl.training import distributed
from wtl.training.distributed import DistInfo, eval_shard

TINY = ["--dataset", "malaria", "--network", "last", "--image-size", "32", "--batch-size", "4", "--workers", "0"]
PER_CLASS = 12  # --max-per-class of the torchrun runs: 24 training images, an even split into 2 x 12
CHECKPOINT = "model_malaria_last.pt"
# A busy 2-core machine needs minutes for a torchrun start; these tests get 15 minutes each.
SLOW = 900


def run_torchrun(*args: str | Path, nproc: int = 2, env: dict[str, str] | None = None, timeout: float = 600):
    """`torchrun --standalone --nproc_per_node=nproc model_main.py ARGS` from the repository root."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
    environment = dict(os.environ, MPLBACKEND="Agg", PYTHONUNBUFFERED="1", **(env or {}))
    return subprocess.run(
        [*command, "model_main.py", *map(str, args)],
        cwd=REPO,
        env=environment,
        input="",
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def folders(root: Path) -> list[str]:
    return ["--models-dir", str(root / "models"), "--manifest-dir", str(root / "manifests")]


def no_traceback(result: subprocess.CompletedProcess[str]) -> None:
    assert result.returncode == 0, result.stderr[-4000:]
    assert "Traceback" not in result.stderr, result.stderr[-4000:]


@pytest.fixture(scope="module")
def ddp_run(malaria_root: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """One epoch by torchrun with two processes; returns (its folder, the shard log folder)."""
    root = tmp_path_factory.mktemp("ddp")
    shards = root / "shards"
    flags = [*TINY, "--max-per-class", str(PER_CLASS), "--data-dir", str(malaria_root), *folders(root)]
    result = run_torchrun(*flags, "--epochs", "1", env={distributed.SHARD_LOG_ENV: str(shards)})
    no_traceback(result)
    (root / "stdout.txt").write_text(result.stdout)
    (root / "stderr.txt").write_text(result.stderr)
    return root, shards


# --------------------------------------------------------------------------- torchrun end to end


@pytest.mark.slow
@pytest.mark.timeout(SLOW)
def test_torchrun_trains_one_checkpoint_that_where_to_look_uses(ddp_run, malaria_root: Path, tmp_path: Path) -> None:
    root, _ = ddp_run
    stdout, stderr = (root / "stdout.txt").read_text(), (root / "stderr.txt").read_text()
    assert "x 2 processes (torchrun)" in stderr
    # Rank 0 alone reports: one epoch line, one test report.
    assert stderr.count("epoch 1/1: train loss") == 1
    assert stdout.count("accuracy: ") == 1
    models = root / "models"
    assert sorted(p.name for p in models.iterdir()) == sorted(
        [
            CHECKPOINT,
            "model_malaria_last.best.pt",
            "model_malaria_last.metrics.json",
            "model_malaria_last.test_files.json",
            "model_malaria_last.history.png",
            "model_malaria_last.best.scale.json",
        ]
    )
    checkpoint = torch.load(models / CHECKPOINT, weights_only=True)
    assert checkpoint["epoch"] == 1
    assert not any(k.startswith(("module.", "_orig_mod.")) for k in checkpoint["net_state_dict"])
    metrics = json.loads((models / "model_malaria_last.metrics.json").read_text())
    assert metrics["settings"]["processes"] == 2
    assert loading.load_model(models / CHECKPOINT).kind == "last"

    image = next((malaria_root / "cell_images" / "Parasitized").glob("*.png"))
    shown = run_cli(
        "single", "--model", models / CHECKPOINT, "--image", image, "--out", tmp_path, "--device", "cpu",
        script="where_to_look.py", timeout=600,
    )  # fmt: skip
    assert shown.returncode == 0, shown.stderr
    assert any(tmp_path.iterdir())


@pytest.mark.slow
@pytest.mark.timeout(SLOW)
def test_torchrun_shards_are_disjoint_and_cover_the_training_split(ddp_run, malaria_root: Path) -> None:
    _, shards = ddp_run
    logs = [json.loads((shards / f"rank{r}.json").read_text()) for r in range(2)]
    assert [log["world_size"] for log in logs] == [2, 2]
    first, second = (set(log["indices"]) for log in logs)
    size = len(make_dataset("malaria", malaria_root, "train", max_samples_per_class=PER_CLASS, size=32))
    assert size % 2 == 0  # an even split: DistributedSampler pads nothing
    assert len(logs[0]["indices"]) == len(logs[1]["indices"]) == size // 2
    assert first.isdisjoint(second)
    assert first | second == set(range(size))


@pytest.mark.slow
@pytest.mark.timeout(SLOW)
def test_resume_from_two_processes_in_one(ddp_run, malaria_root: Path, tmp_path: Path) -> None:
    root, _ = ddp_run
    shutil.copytree(root / "models", tmp_path / "models")
    flags = [*TINY, "--max-per-class", str(PER_CLASS), "--data-dir", malaria_root, *folders(tmp_path)]
    result = run_cli(*flags, "--epochs", "2", timeout=600)
    no_traceback(result)
    assert "after epoch 1 of 2" in result.stderr and "epoch 2/2: train loss" in result.stderr
    assert "epoch 1/2:" not in result.stderr
    checkpoint = torch.load(tmp_path / "models" / CHECKPOINT, weights_only=True)
    assert checkpoint["epoch"] == 2
    assert checkpoint["scheduler_state_dict"]["last_epoch"] == 2


@pytest.mark.slow
@pytest.mark.timeout(SLOW)
def test_amp_and_compile_on_cpu_note_and_train_then_resume_in_two_processes(malaria_root: Path, tmp_path: Path) -> None:
    small = ["--data-dir", malaria_root, "--max-per-class", "8", *folders(tmp_path)]
    single = run_cli(
        *TINY, *small, "--epochs", "1", "--amp", "--compile", "--channels-last", "--device", "cpu", timeout=600
    )
    no_traceback(single)
    assert "note: --amp has no effect on cpu" in single.stderr
    assert "note: --compile is for CUDA GPUs" in single.stderr
    assert "epoch 1/1: train loss" in single.stderr

    both = run_torchrun(*TINY, *small, "--epochs", "2")
    no_traceback(both)
    assert "after epoch 1 of 2" in both.stderr and both.stderr.count("epoch 2/2: train loss") == 1
    checkpoint = torch.load(tmp_path / "models" / CHECKPOINT, weights_only=True)
    assert checkpoint["epoch"] == 2
    # 16 images in steps of 4: 4 Adam steps alone, then 2 per epoch with two processes.
    assert {float(s["step"]) for s in checkpoint["optim_state_dict"]["state"].values()} == {6.0}


# --------------------------------------------------------------------------- one step: 2 processes == 1


# (network kind, every-block loss): the last one leaves transform1-3 unused (find_unused_parameters).
CONFIGS = [("last", False), ("every", True), ("every", False)]
GLOBAL_BATCH = 8
# Adam's first step moves each weight by lr * g / (|g| + eps): for gradients near zero
# (dead ReLUs) float noise of 1e-9 in g moves a weight by up to ~lr * 1e-9 / eps = 1e-4.
# The gradients themselves are compared tightly; weights to a tenth of the step size.
ADAM_NOISE = 1e-4


def _data() -> tuple[torch.Tensor, torch.Tensor, TensorDataset]:
    generator = torch.Generator().manual_seed(7)
    images = torch.rand((GLOBAL_BATCH, 3, 32, 32), generator=generator)
    labels = torch.tensor([0, 1] * (GLOBAL_BATCH // 2))
    # 7 validation images: the two shards hold 4 and 3, and nothing is counted twice.
    val = TensorDataset(torch.randint(0, 256, (7, 3, 32, 32), generator=generator, dtype=torch.uint8), labels[:7])
    return images, labels, val


def _one_step(kind: str, every: bool, info: DistInfo | None, images: torch.Tensor, labels: torch.Tensor) -> Trainer:
    torch.manual_seed(0)
    trainer = Trainer(build_network(kind), torch.nn.CrossEntropyLoss(), every, lr=1e-3, show_progress=False, dist=info)
    # Eval mode: no dropout, and batch norm uses (frozen) running statistics, so that a
    # shard's step does not depend on the other shard's batch statistics.
    trainer.network.eval()
    trainer.train_step(images, labels)
    return trainer


def _snapshot(trainer: Trainer, val: TensorDataset, info: DistInfo | None) -> dict:
    grads = {n: None if p.grad is None else p.grad.clone() for n, p in trainer.network.named_parameters()}
    shard = val if info is None else eval_shard(val, info)
    return {
        "weights": trainer.network.state_dict(),
        "grads": grads,
        "val": trainer.epoch(DataLoader(shard, batch_size=2), training=False),
    }


def _ddp_worker(rank: int, world_size: int, init_file: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        info = DistInfo(rank=rank, world_size=world_size)
        images, labels, val = _data()
        part = slice(rank * GLOBAL_BATCH // world_size, (rank + 1) * GLOBAL_BATCH // world_size)
        results = {}
        for kind, every in CONFIGS:
            trainer = _one_step(kind, every, info, images[part], labels[part])
            results[(kind, every)] = _snapshot(trainer, val, info)
        if rank == 0:
            torch.save(results, out)
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
@pytest.mark.timeout(SLOW)
def test_one_step_on_two_processes_equals_one_process(tmp_path: Path) -> None:
    out = tmp_path / "ddp.pt"
    mp.spawn(_ddp_worker, args=(2, str(tmp_path / "init"), str(out)), nprocs=2, join=True)
    ddp = torch.load(out, weights_only=False)
    images, labels, val = _data()
    for kind, every in CONFIGS:
        single = _snapshot(_one_step(kind, every, None, images, labels), val, None)
        other = ddp[(kind, every)]
        for name, grad in single["grads"].items():
            if grad is None:  # unused by this loss: no gradient in either run
                assert other["grads"][name] is None, name
            else:
                torch.testing.assert_close(other["grads"][name], grad, rtol=1e-4, atol=1e-7, msg=name)
        for name, value in single["weights"].items():
            torch.testing.assert_close(other["weights"][name], value, rtol=0, atol=ADAM_NOISE, msg=name)
        # Validation sums reduced over the two shards equal one pass over all 7 images.
        assert other["val"] == pytest.approx(single["val"], rel=1e-5)


# --------------------------------------------------------------------------- small pieces


def test_plain_run_has_no_process_group(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    assert not distributed.launched_by_torchrun()
    info = distributed.setup("cpu")
    assert info == DistInfo() and info.is_main and not info.enabled
    assert distributed.is_main() and not dist.is_initialized()
    assert distributed.reduce_sums([1.0, 2.0]).tolist() == [1.0, 2.0]
    distributed.barrier()
    distributed.cleanup()


def test_eval_shards_split_without_repeats() -> None:
    data = list(range(11))
    shards = [list(eval_shard(data, DistInfo(rank=r, world_size=3))) for r in range(3)]
    assert sorted(sum(shards, [])) == data
    assert [len(s) for s in shards] == [4, 4, 3]
    assert eval_shard(data, DistInfo()) is data


def test_torchrun_refuses_prompts(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """Under torchrun a missing answer is one error line naming the flag, not a prompt."""
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setattr("builtins.input", lambda prompt="": pytest.fail("prompted under torchrun"))
    assert model_main.main(["--dataset", "malaria"]) == 2
    lines = error_lines(capsys.readouterr().err)
    assert lines == ["error: torchrun runs several processes, which cannot answer prompts: pass --data-dir PATH"]
    assert not dist.is_initialized()
    monkeypatch.setenv("RANK", "1")
    assert model_main.main(["--dataset", "malaria"]) == 2
    assert error_lines(capsys.readouterr().err) == []  # rank 0 alone says it


def test_compile_failure_falls_back_with_a_note(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    class Broken(torch.nn.Module):
        def __init__(self, module: torch.nn.Module) -> None:
            super().__init__()
            self.inner = module

        def forward(self, *args, **kwargs):
            raise RuntimeError("no working C compiler\nsecond line")

    monkeypatch.setattr(torch, "compile", Broken)
    images, labels, _ = _data()
    torch.manual_seed(0)
    trainer = Trainer(build_network("last"), torch.nn.CrossEntropyLoss(), lr=1e-3, compile_model=True)
    trainer.network.eval()
    trainer.train_step(images, labels)
    assert capsys.readouterr().err.strip() == "note: torch.compile failed, training uncompiled (no working C compiler)"
    eager = _one_step("last", False, None, images, labels)
    for name, value in eager.network.state_dict().items():
        torch.testing.assert_close(trainer.network.state_dict()[name], value, msg=name)


@pytest.mark.slow
@pytest.mark.skipif(not torch.cuda.is_available(), reason="torch.compile is used on CUDA only")
def test_compile_on_cuda_trains_compiled(capsys: pytest.CaptureFixture[str]) -> None:
    images, labels, _ = _data()
    torch.manual_seed(0)
    trainer = Trainer(build_network("last"), torch.nn.CrossEntropyLoss(), device="cuda", compile_model=True)
    trainer.train_step(images.cuda(), labels.cuda())
    assert "note:" not in capsys.readouterr().err
    assert trainer.model is not trainer._eager
    assert not any(k.startswith("_orig_mod.") for k in trainer.network.state_dict())


def test_channels_last_trains_the_same(tmp_path: Path) -> None:
    images, labels, _ = _data()
    plain = _one_step("last", False, None, images, labels)
    torch.manual_seed(0)
    trainer = Trainer(build_network("last"), torch.nn.CrossEntropyLoss(), lr=1e-3, channels_last=True)
    trainer.network.eval()
    trainer.train_step(trainer._input(images), labels)
    assert trainer.network.features[0].seq[0].weight.is_contiguous(memory_format=torch.channels_last)
    for name, value in plain.network.state_dict().items():
        torch.testing.assert_close(trainer.network.state_dict()[name], value, rtol=0, atol=ADAM_NOISE, msg=name)
