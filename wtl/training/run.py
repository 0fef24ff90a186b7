"""One training run as model_main.py starts it: splits, caches, network, trainer, the test split's report.

`TrainConfig` holds every knob (the CLI fills it from its flags and prompts); `train` carries
the run out, resumes it where a checkpoint says, and writes the checkpoint, the best weights,
the test split's manifest and the metrics beside each other (names.py has their names).
"""

from __future__ import annotations

import dataclasses
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from wtl import names
from wtl.checkpoints.io import load_checkpoint, save_checkpoint
from wtl.checkpoints.scales import scale_split, write_scale
from wtl.data import augment as augmentations
from wtl.data.cache import DatasetCache
from wtl.data.datasets import DATASETS
from wtl.data.groups import find_identity_manifest, identities_by_split, read_identities, shared_identities
from wtl.data.manifests import write_test_manifest
from wtl.data.registry import DEFAULT_PREPROCESS
from wtl.data.shuffling import chance_agreement, label_agreement, shuffle_labels
from wtl.data.splits import TrainingSplits, training_splits
from wtl.errors import UsageError
from wtl.maps.scale import model_scale
from wtl.metrics import ood
from wtl.metrics.classification import Classification
from wtl.nets import zoo
from wtl.nets.modes import eval_mode
from wtl.nets.registry import BLOCK_DROPOUT, DROPOUT, PRETRAINED_IMAGENET, is_zoo
from wtl.nets.seed import ORIGINAL, Architecture, build_network
from wtl.nets.summary import format_summary, summary
from wtl.runtime import pick_device, seed_everything
from wtl.training.checkpointing import CheckpointTrainer
from wtl.training.distributed import DistInfo, eval_shard, log_shard, train_sampler
from wtl.training.trainer import Freeze, pick_amp_dtype


@dataclass
class TrainConfig:
    """Everything a training run needs; the defaults are model_main.py's."""

    dataset: str  # malaria, gender or folder
    data_dir: Path
    network: str = "last"  # last or every (the seed networks), or a torchvision name of nets.registry.ZOO
    loss: str = "last"  # every network: loss on the last block or summed over every block
    max_per_class: int | None = None
    split_by: str = "group"
    identities: Path | None = None
    preprocess: str = "auto"
    image_size: int = 128
    workers: int = 2
    dropout: float = DROPOUT
    block_dropout: float = BLOCK_DROPOUT
    blocks: int = ORIGINAL.blocks  # the network's depth, kernel side and block-1 width (the original: 4, 5, 32)
    kernel: int = ORIGINAL.kernel
    width: int = ORIGINAL.width
    models_dir: Path = Path("models")
    manifest_dir: Path | None = None
    restart: bool = False
    epochs: int = 10
    batch_size: int = 16
    lr: float = 1e-3
    schedule: str = "exponential"
    gamma: float = 0.85
    augment: str = "auto"
    ema: float | None = None
    label_smoothing: float = 0.0
    seed: int = 0
    shuffle_labels: bool = False  # Adebayo's data randomisation: the training labels permuted (seeded)
    device: str = "auto"
    amp: bool = False
    channels_last: bool = False
    compile: bool = False
    pretrained: str | None = None  # torchvision networks: 'imagenet' or a local weights file
    freeze_backbone: int = 0  # torchvision networks: train only the head for this many first epochs

    @property
    def data_name(self) -> str:
        """The data-set part of file names: gender, malaria, or the folder's own name."""
        return names.data_name(self.dataset, self.data_dir)

    @property
    def run_name(self) -> str:
        """last, every_single_loss or every_multi_loss (with _shuffled_labels for --shuffle-labels)."""
        run = names.run_name(self.network, self.loss)
        return names.shuffled_run_name(run) if self.shuffle_labels else run

    @property
    def checkpoint(self) -> Path:
        """Where the run's resumable checkpoint goes (the original names: models/model_malaria_last.pt...)."""
        return names.checkpoint_file(self.models_dir, self.data_name, self.run_name)

    @property
    def resolved_preprocess(self) -> str:
        """squash or center-crop: the flag, or the data set's default for 'auto'."""
        return DEFAULT_PREPROCESS[self.dataset] if self.preprocess == "auto" else self.preprocess

    @property
    def architecture(self) -> Architecture:
        """The network's shape."""
        return Architecture(self.blocks, self.kernel, self.width)

    def settings(self) -> dict[str, Any]:
        """The knobs as JSON-able values, for the metrics file."""
        return {k: str(v) if isinstance(v, Path) else v for k, v in dataclasses.asdict(self).items()}


def identity_check(config: TrainConfig, splits: TrainingSplits) -> str:
    """One line saying whether any person (faces) or patient (cells) sits in two splits."""
    noun = "patients" if config.dataset in ("malaria", "folder") else "people"
    source = config.identities or find_identity_manifest(config.data_dir)
    known = read_identities(source) if source else None
    by_split = identities_by_split(
        {"train": splits.train, "val": splits.val, "test": splits.test}, DATASETS[config.dataset].group, known
    )
    if not any(by_split.values()):
        return (
            f"{noun}: unknown (the file names carry no identity); pass --identities CSV to check that "
            f"no one is in two splits"
        )
    counts = ", ".join(f"{len(ids)} in {split}" for split, ids in by_split.items())
    where = f" (identities from {source})" if source else " (identities from the file names)"
    shared = shared_identities(by_split)
    if not shared:
        return f"{noun}: {counts}; none in two splits{where}"
    example = ", ".join(f"{i} in {'+'.join(s)}" for i, s in list(shared.items())[:3])
    return (
        f"warning: {len(shared)} {noun} sit in two splits (e.g. {example}){where}: validation and test "
        f"accuracy overstate the accuracy on new {noun}"
    )


def make_network(config: TrainConfig, num_classes: int, resuming: bool) -> tuple[torch.nn.Module, str | None]:
    """The run's network (a seed network or a torchvision one, pretrained where asked) and a note on its weights.

    A resumed run takes its weights from its checkpoint: pretrained weights are not read again.
    """
    if not is_zoo(config.network):
        network = build_network(config.network, num_classes, config.dropout, config.block_dropout, config.architecture)
        return network, None
    if config.pretrained and not resuming:
        if config.pretrained == PRETRAINED_IMAGENET:
            state, where = zoo.imagenet_state(config.network)
        else:
            state, where = load_checkpoint(config.pretrained)["net_state_dict"], str(config.pretrained)
        return zoo.pretrained(config.network, num_classes, state, where)
    return zoo.build(config.network, num_classes), None


def _metadata(
    config: TrainConfig, network: torch.nn.Module, class_names: list[str], preprocess: str, shuffled: dict | None
) -> dict:
    """What the checkpoint says about its model, so that every command loads it without flags."""
    metadata: dict[str, Any] = {
        "class_names": class_names,
        "image_size": config.image_size,
        "preprocess": preprocess,
        "network": config.network,
        "loss": config.loss,
        "dataset": config.dataset,
        "seed": config.seed,
        "schedule": config.schedule,
        "ema": config.ema,
        # Recorded so that every command can mark a model that learned random labels.
        "shuffled_labels": shuffled,
    }
    if isinstance(network, zoo.TorchvisionNet):
        metadata.update(
            arch=network.arch,
            normalisation=network.normalisation_record(),
            pretrained=config.pretrained,
            freeze_backbone=config.freeze_backbone,
        )
    else:
        metadata["architecture"] = dataclasses.asdict(config.architecture)
    return metadata


def _freezing(network: torch.nn.Module, epochs: int) -> Freeze | None:
    """--freeze-backbone N: the backbone's parameters and modules, fixed for the first N epochs."""
    if epochs <= 0:
        return None
    if not isinstance(network, zoo.TorchvisionNet):
        raise UsageError("--freeze-backbone is for torchvision networks (--network resnet18 ...)")
    return Freeze(epochs, zoo.backbone_parameters(network), zoo.backbone_modules(network))


def loss_function(config: TrainConfig) -> torch.nn.Module:
    """Cross-entropy, with --label-smoothing eps: (1 - eps) * CE + eps * mean over classes of -log p."""
    return torch.nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)


def needs_restart_question(config: TrainConfig) -> bool:
    """True when a checkpoint with weights but no training state (bundled, downloaded) is in the run's way."""
    path = config.checkpoint
    if config.restart or not path.is_file():
        return False
    return "optim_state_dict" not in load_checkpoint(path)


def _say(text: str) -> None:
    print(text, file=sys.stderr)


def _announce(config: TrainConfig, splits: TrainingSplits, dist: DistInfo) -> None:
    """Rank 0's start-up lines: notes on the split, the sizes, the manifest, the identity check."""
    for note in splits.notes:
        _say(note)
    manifest = None
    if splits.test.samples:
        manifest = write_test_manifest(splits.test, names.manifest_file(config.checkpoint))
        if config.manifest_dir is not None:
            write_test_manifest(
                splits.test, config.manifest_dir / names.seed_manifest_name(config.data_name, config.run_name)
            )
    processes = f" x {dist.world_size} processes (torchrun)" if dist.enabled else ""
    _say(
        f"{config.dataset}: {len(splits.train)} training, {len(splits.val)} validation, {len(splits.test)} test "
        f"images; classes {', '.join(splits.train.class_names)}; {config.resolved_preprocess} to "
        f"{config.image_size} px; device {dist.device}{processes}"
        + (f"; test files listed in {manifest}" if manifest else "")
    )
    _say(identity_check(config, splits))


def store_ood_statistics(
    trainer: CheckpointTrainer, train_cache: DatasetCache, val_cache: DatasetCache | None, classes: int
) -> dict[str, Any]:
    """Fit the out-of-distribution statistics of the best weights and add them to both checkpoints; their summary.

    The class means and covariance come from the training pictures as they are (no augmentation),
    the thresholds from the validation pictures (metrics.ood.fit).
    """
    best = load_checkpoint(trainer.best_path)
    trainer.network.load_state_dict(best["net_state_dict"])
    loader = DataLoader(train_cache, batch_size=256)
    held = DataLoader(val_cache, batch_size=256) if val_cache is not None else None
    statistics = ood.fit(trainer.network, loader, held, classes)
    for path in (trainer.best_path, trainer.chkpt_path):
        content = best if path == trainer.best_path else load_checkpoint(path)
        save_checkpoint({**content, "ood": statistics.to_dict()}, path)
    _say(
        f"out-of-distribution statistics: fitted on the {statistics.fitted_on}, thresholds at the "
        f"{statistics.quantile:.0%} quantile of the {statistics.chosen_on} "
        f"({', '.join(f'{k} {v:.4g}' for k, v in statistics.thresholds.items())}; {statistics.score} decides)"
    )
    return {
        "score": statistics.score,
        "thresholds": statistics.thresholds,
        "quantile": statistics.quantile,
        "fitted_on": statistics.fitted_on,
        "chosen_on": statistics.chosen_on,
    }


def _write_scale(
    network: torch.nn.Module, splits: TrainingSplits, config: TrainConfig, device: torch.device, best: Path
) -> Path:
    """Measure the model's shared colour scale (maps.scale) on the split scale_split picks; write it beside `best`."""
    by_name = {"test": splits.test, "val": splits.val, "train": splits.train}
    name = scale_split({key: len(split.samples) for key, split in by_name.items()})
    split = by_name[name]
    cache = DatasetCache(split).fill(config.workers, f"decoding {name} for the colour scale")
    loader = DataLoader(cache, batch_size=64)
    with eval_mode(network):
        batches = (images.to(device).float().div_(255.0) for images, _ in loader)
        scale = model_scale(network, batches, f"{name} split of {config.data_dir} ({len(split)} images)")
    return write_scale(scale, best)


def train(config: TrainConfig, dist: DistInfo | None = None) -> dict[str, Any] | None:
    """Train (or resume) one model; returns the metrics written (None on ranks but 0).

    `dist` comes from distributed.setup(); without it this is a plain single-process run.
    """
    dist = dist or DistInfo(device=pick_device(config.device))
    device, main = dist.device, dist.is_main
    seed_everything(config.seed)
    preprocess = config.resolved_preprocess
    splits = training_splits(
        config.dataset,
        config.data_dir,
        config.max_per_class,
        config.seed,
        config.image_size,
        preprocess,
        config.split_by,
        config.identities,
    )
    class_names = splits.train.class_names
    checkpoint = config.checkpoint
    shuffled = None
    if config.shuffle_labels:
        true_samples = splits.train.samples
        splits.train.samples = shuffle_labels(true_samples, config.seed)
        shuffled = {
            "seed": config.seed,
            "agreement": label_agreement(true_samples, splits.train.samples),
            "chance": chance_agreement(true_samples),
        }
    if main:
        _announce(config, splits, dist)
        if shuffled is not None:
            _say(
                f"shuffled labels: the {len(splits.train)} training labels are permuted (seed {config.seed}); "
                f"{shuffled['agreement']:.1%} keep their true label (chance {shuffled['chance']:.1%}); "
                "the last epoch's weights count as best (validation, on true labels, can only be at chance)"
            )
    amp_dtype = pick_amp_dtype(device) if config.amp else None
    if config.amp and main:
        if amp_dtype is None:
            _say(f"note: --amp has no effect on {device.type} (mixed precision is for CUDA GPUs); training in float32")
        else:
            _say(f"mixed precision: {str(amp_dtype).removeprefix('torch.')} autocast")
    # On the CPU, inductor's C++ build of this network took 14 minutes on a 2-core machine:
    # a CPU run does not earn that back.
    compile_model = config.compile and device.type == "cuda"
    if config.compile and not compile_model and main:
        _say(f"note: --compile is for CUDA GPUs (compiling for {device.type} takes minutes); training uncompiled")

    # Under torchrun every rank decodes the whole train and val split (N times the work
    # and memory on one machine): a rank's shard changes every epoch, and a full cache
    # on every rank keeps that simple and the ranks identical.
    train_cache = DatasetCache(splits.train).fill(config.workers, "decoding train", progress=main)
    sampler = train_sampler(train_cache, dist, config.seed) if dist.enabled else None
    if sampler is None:
        loader_train = DataLoader(train_cache, batch_size=config.batch_size, shuffle=True)
    else:
        loader_train = DataLoader(train_cache, batch_size=config.batch_size, sampler=sampler)
    loader_val = None
    val_cache = None
    if splits.val.samples:
        val_cache = DatasetCache(splits.val).fill(config.workers, "decoding val", progress=main)
        loader_val = DataLoader(eval_shard(val_cache, dist), batch_size=256)
    log_shard(sampler, dist, len(train_cache))

    if config.freeze_backbone and dist.enabled:
        raise UsageError("--freeze-backbone is not supported under torchrun: train with one process")
    resuming = not config.restart and checkpoint.is_file()
    network, weights_note = make_network(config, len(class_names), resuming)
    if weights_note and main:
        _say(weights_note)
    if main:
        _say(format_summary(summary(network, config.image_size), f"network {config.network}: parameters"))
    metadata = _metadata(config, network, class_names, preprocess, shuffled)
    trainer = CheckpointTrainer(
        network,
        loss_function(config),
        checkpoint,
        config.epochs,
        every_layer_loss=config.loss == "every",
        metadata=metadata,
        seed=config.seed,
        resume=not config.restart,
        lr=config.lr,
        gamma=config.gamma,
        schedule=config.schedule,
        ema_decay=config.ema,
        device=device,
        augment=augmentations.for_dataset(config.augment, config.dataset),
        dist=dist,
        amp_dtype=amp_dtype,
        channels_last=config.channels_last,
        compile_model=compile_model,
        freeze=_freezing(network, config.freeze_backbone),
        select_best=shuffled is None,
    )
    try:
        history = trainer.train(loader_train, loader_val)
    except KeyboardInterrupt:
        if main:
            _say(
                f"\ninterrupted: {checkpoint} holds epoch {trainer.ep} of {config.epochs}; "
                "run the same command again to resume"
            )
        raise SystemExit(130) from None
    if not main:
        return None  # rank 0 alone judges the test split and writes the metrics

    report: dict[str, Any] = {"test": None}
    # The test split is judged with the best-validation weights, as they are the ones to use.
    best = load_checkpoint(trainer.best_path)
    trainer.network.load_state_dict(best["net_state_dict"])
    if splits.test.samples:
        loader_test = DataLoader(DatasetCache(splits.test).fill(config.workers, "decoding test"), batch_size=256)
        scores = Classification.from_predictions(*trainer.predict(loader_test), class_names)
        print(scores.format())
        report = {**scores.to_json(), "best_epoch": best.get("epoch")}
    if history or "ood" not in load_checkpoint(trainer.best_path):
        report["ood"] = store_ood_statistics(trainer, train_cache, val_cache, len(class_names))
    if history or not names.scale_file(trainer.best_path).exists():
        scale_path = _write_scale(trainer.network, splits, config, device, trainer.best_path)
        print(f"shared colour scale: {scale_path}")
    report.update(checkpoint=str(checkpoint), best_checkpoint=str(trainer.best_path), notes=splits.notes)
    report["settings"] = {**config.settings(), "preprocess": preprocess}
    if dist.enabled:
        report["settings"]["processes"] = dist.world_size
    report["history"] = trainer.history  # every epoch, also those before a resume
    metrics_path = names.metrics_file(checkpoint)
    if history or not metrics_path.exists():
        # A rerun of a finished run trains nothing: keep the metrics of the run that did.
        metrics_path.write_text(json.dumps(report, indent=1) + "\n")
    print(f"checkpoint: {checkpoint}\nbest weights: {trainer.best_path}\nmetrics: {metrics_path}")
    return report
