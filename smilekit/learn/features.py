"""Train LiteNet's top on cached outputs of its frozen, ImageNet-pretrained early blocks.

Fine-tuning all of LiteNet costs 12-16 s per 128-face step on a 2-core CPU. Here
the stem and the first ``freeze_blocks`` blocks run once per crop (train crops
also mirrored and in ``augmented_copies`` augmented versions), their outputs are
cached on disk as float16, and only the later blocks and the head are trained,
on the cache. Balancing, weight averaging, selection by mean validation balanced
accuracy and temperature fitting are those of :mod:`smilekit.learn.train`; the result
is an ordinary ``litenet`` checkpoint with its ONNX export.
"""
from __future__ import annotations

import hashlib
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from . import metrics
from .. import settings
from .evaluate import write_json
from .model import LiteNet, center, save_checkpoint
from ..runtime import probabilities
from .train import TrainConfig, WeightAverage, augment, balanced_weights, load_split_crops, seed_everything


@dataclass
class FeatureConfig:
    data_root: str | None = None  # as TrainConfig
    datasets: tuple = TrainConfig.datasets
    source_balance: str = "equal"
    input_px: int = 64  # LiteNet's input side (the 64x64 crop is resized to it)
    freeze_blocks: int = 8  # the stem and this many of the 16 blocks stay as pretrained on ImageNet
    augmented_copies: int = 1  # augmented copies of every train crop, besides the plain and the mirrored one
    epochs: int = 16
    draws_per_epoch: int = 16384
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 5e-4
    dropout: float = 0.2
    ema_decay: float = 0.998
    patience: int = 30
    seed: int = 0
    limit: int | None = None  # at most this many images per dataset and split (quick runs)
    out: str = "outputs/runs/litenet-frozen.pt"
    threads: int = 2


def train_variants(crops: torch.Tensor, copies: int, seed: int):
    """(name, N x 1 x 64 x 64 inputs) for the train crops: plain, mirrored and ``copies`` augmented versions."""
    plain = center(crops)
    yield "plain", plain
    yield "mirror", plain.flip(-1)
    for copy in range(copies):
        yield f"augmented{copy}", augment(crops, torch.Generator().manual_seed(seed + copy))


@torch.inference_mode()
def frozen_outputs(model: LiteNet, inputs: torch.Tensor, blocks: int, batch_size: int = 256) -> torch.Tensor:
    """The frozen part's output for every input, as float16."""
    model.eval()
    return torch.cat([model.frozen_part(inputs[i : i + batch_size], blocks).half() for i in range(0, len(inputs), batch_size)])


@torch.inference_mode()
def advance(model: LiteNet, outputs: torch.Tensor, start: int, stop: int, batch_size: int = 512) -> torch.Tensor:
    """Cached outputs of blocks ``[0, start)`` carried on through blocks ``[start, stop)``, as float16."""
    model.eval()
    return torch.cat([model.features.blocks(outputs[i : i + batch_size].float(), start, stop).half()
                      for i in range(0, len(outputs), batch_size)])


def cached_outputs(model: LiteNet, inputs: torch.Tensor, blocks: int, tag: str, cache_dir: Path) -> torch.Tensor:
    """:func:`frozen_outputs`, read from ``cache_dir`` when these inputs went through these blocks before.

    A cache of fewer blocks for the same inputs is carried on rather than starting again from the faces.
    """
    digest = hashlib.sha256(inputs.numpy().tobytes()).hexdigest()[:16]
    path_of = lambda b: cache_dir / f"litenet{model.features.input_px}-blocks{b}-{tag}-{digest}.pt"
    if not path_of(blocks).is_file():
        cache_dir.mkdir(parents=True, exist_ok=True)
        fewer = [b for b in range(blocks) if path_of(b).is_file()]
        outputs = (advance(model, torch.load(path_of(fewer[-1]), weights_only=True), fewer[-1], blocks) if fewer
                   else frozen_outputs(model, inputs, blocks))
        torch.save(outputs, path_of(blocks).with_suffix(".tmp"))
        os.replace(path_of(blocks).with_suffix(".tmp"), path_of(blocks))  # never leave a half-written cache behind
    return torch.load(path_of(blocks), weights_only=True)


def evaluate_cached(model: LiteNet, sets: dict, blocks: int, temperature: float = 1.0) -> tuple[dict, dict]:
    """Per-dataset summary figures and logits from cached frozen outputs: {name: (outputs, labels)}."""
    model.eval()
    results, logits = {}, {}
    with torch.inference_mode():
        for name, (outputs, labels) in sets.items():
            logits[name] = torch.cat([model.from_frozen(outputs[i : i + 512].float(), blocks)
                                      for i in range(0, len(outputs), 512)]).numpy()
            results[name] = metrics.summary(labels, probabilities(logits[name], temperature))
    return results, logits


def train_frozen(config: FeatureConfig, progress: bool = True) -> dict:
    """Cache the frozen part's outputs, train the rest, keep the best epoch, calibrate, write the checkpoint."""
    seed_everything(config.seed)
    torch.set_num_threads(config.threads)
    model = LiteNet(input_px=config.input_px, dropout=config.dropout)
    blocks, cache_dir = config.freeze_blocks, settings.cache_dir() / "features"
    crop_config = TrainConfig(data_root=config.data_root, datasets=config.datasets, limit=config.limit)

    # cached frozen outputs
    train_outputs, labels, sources, groups = [], [], [], []
    for name, (crops, set_labels, samples) in load_split_crops(crop_config, "train", progress).items():
        for variant, inputs in train_variants(torch.from_numpy(crops), config.augmented_copies, config.seed):
            if progress:
                print(f"frozen outputs: {name} train {variant}", flush=True)
            train_outputs.append(cached_outputs(model, inputs, blocks, f"{name}-train-{variant}", cache_dir))
            labels.append(set_labels)
            sources += [name] * len(set_labels)
            groups += [s.male for s in samples]
    val_sets = {name: (cached_outputs(model, center(torch.from_numpy(crops)), blocks, f"{name}-val", cache_dir), set_labels)
                for name, (crops, set_labels, _) in load_split_crops(crop_config, "val", progress).items()}
    train_outputs, labels = torch.cat(train_outputs), np.concatenate(labels)
    weights = torch.from_numpy(balanced_weights(labels, np.array(sources), np.array(groups, dtype=object), config.source_balance))
    labels_t = torch.from_numpy(labels).float()

    # only the blocks after the frozen ones, and the head, learn
    frozen = [model.features.net._conv_stem, model.features.net._bn0, *model.features.net._blocks[:blocks]]
    for module in frozen:
        module.requires_grad_(False)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=config.lr, weight_decay=config.weight_decay)
    steps_per_epoch = max(1, config.draws_per_epoch // config.batch_size)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=config.lr, total_steps=config.epochs * steps_per_epoch, pct_start=0.15)
    ema, averaged = WeightAverage(model, config.ema_decay), LiteNet(input_px=config.input_px, dropout=config.dropout)
    generator = torch.Generator().manual_seed(config.seed)

    best_score, best_epoch, best_state, history = -1.0, 0, None, []
    for epoch in range(config.epochs):
        model.train()
        started, total_loss = time.time(), 0.0
        order = torch.multinomial(weights, steps_per_epoch * config.batch_size, replacement=True, generator=generator)
        for idx in tqdm(order.view(-1, config.batch_size), desc=f"epoch {epoch + 1}/{config.epochs}", disable=not progress, mininterval=10):
            loss = F.binary_cross_entropy_with_logits(model.from_frozen(train_outputs[idx].float(), blocks), labels_t[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            ema.update(model)
            total_loss += loss.item()
        averaged.load_state_dict(ema.state)
        val, _ = evaluate_cached(averaged, val_sets, blocks)
        score = float(np.mean([v["balanced_accuracy"] for v in val.values()]))
        history.append({"epoch": epoch + 1, "train_loss": total_loss / steps_per_epoch, "val": val, "val_score": score,
                        "seconds": time.time() - started})
        if progress:
            print(f"epoch {epoch + 1}: loss {total_loss / steps_per_epoch:.4f}, val balanced accuracy {score:.4f} "
                  + " ".join(f"{k}={v['balanced_accuracy']:.4f}" for k, v in val.items()), flush=True)
        if score > best_score:
            best_score, best_epoch, best_state = score, epoch + 1, {k: v.clone() for k, v in ema.state.items()}
        if epoch + 1 - best_epoch >= config.patience:
            break

    # best weights, calibration on validation, checkpoint
    model.load_state_dict(best_state)
    _, val_logits = evaluate_cached(model, val_sets, blocks)
    temperature = metrics.fit_temperature(np.concatenate(list(val_logits.values())), np.concatenate([l for _, l in val_sets.values()]))
    val, _ = evaluate_cached(model, val_sets, blocks, temperature)
    data_desc = {name: {"train": int((np.array(sources) == name).sum()) // (2 + config.augmented_copies), "val": int(len(l)),
                        "split": "split.csv of the dataset (train used for fitting, val for early stopping and temperature)"}
                 for name, (_, l) in val_sets.items()}
    checkpoint = save_checkpoint(config.out, model, "litenet", temperature=temperature, data=data_desc, metrics={"val": val},
                                 training=f"stem and blocks 0-{blocks - 1} frozen (ImageNet), the rest trained on their cached outputs",
                                 trained_at=time.strftime("%Y-%m-%d %H:%M:%S"))
    report = {"config": asdict(config), "best_epoch": best_epoch, "val_score": best_score, "temperature": temperature,
              "val": val, "history": history, "version": checkpoint["version"]}
    write_json(Path(config.out).with_suffix(".json"), report)
    return report
