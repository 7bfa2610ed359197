"""Train a smile classifier on face crops: config, data, model, optimiser, loop, checkpoint.

Read top to bottom. Runs on CPU; every epoch ends with a validation pass, the
best epoch (by mean balanced accuracy over the validation sets) is kept, and a
``*.last.pt`` file lets an interrupted run resume.
"""
from __future__ import annotations

import math
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from . import data as data_mod
from . import metrics
from .devices import Workers, pick_device
from .evaluate import write_json
from .model import as_images, build_model, center, checkpoint_meta, load_checkpoint, logits_of, save_checkpoint
from ..runtime import INPUT_SIZE, probabilities, with_channels


@dataclass
class TrainConfig:
    data_root: str | None = None  # folder holding smilesmiled/, celeba-subset/ ... (default $SMILEKIT_DATA)
    datasets: tuple = ("smilesmiled", "celeba-subset", "mtfl", "fer2013")
    source_balance: str = "equal"  # each dataset's share of the draws: "equal", or "size" (its share of the images)
    draws_per_epoch: int | None = 16384  # training faces drawn per epoch (None: as many as there are)
    arch: str = "smilenet"
    arch_kwargs: dict = field(default_factory=dict)  # e.g. {"width": 32}; defaults are the architecture's own
    epochs: int = 24
    batch_size: int = 128
    lr: float = 3e-3
    weight_decay: float = 5e-4
    seed: int = 0
    out: str = "outputs/model.pt"
    limit: int | None = None  # at most this many images per dataset and split (quick runs)
    patience: int = 30  # stop after this many epochs without a better validation score
    ema_decay: float = 0.998  # validation, early stopping and the saved weights use this moving average of the weights
    resume: bool = False
    extra_train: list = field(default_factory=list)  # (uint8 context crops, labels) pairs, e.g. from feedback
    extra_share: float | None = None  # share of the draws given to extra_train (None: one more source for source_balance)
    init_from: str | None = None  # start from this checkpoint's weights (fine-tuning)
    distill: float = 0.0  # fine-tuning: weight of a loss keeping init_from's outputs on the non-extra draws (learning without forgetting)
    extra_noise: float = 0.0  # fine-tuning: assumed share of wrong extra labels; each extra draw's loss is weighted by click_trust
    threads: int = 2
    channels_last: bool = True  # model and batches in torch.channels_last: 1.5x faster steps for LiteNet on CPU (benchmarks/bench_train_step.py)
    device: str = "cpu"  # cpu, cuda, mps or auto (the best present); torchrun workers share each epoch


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def augment(crops: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random geometry and photometry on context crops (grey or RGB) -> N x C x 64 x 64 training inputs.

    Scale 0.9-1.1, rotation +-12 deg, shift +-6 %, mirror; brightness, contrast,
    gamma, blur (low resolution) and noise, so the model does not depend on one
    camera, lighting or dataset; RGB faces are turned grey one time in five
    (a grey photo must not look like another dataset); then :func:`erase`.
    """
    n = crops.shape[0]
    x = as_images(crops)
    rand = lambda *shape: torch.rand(*shape, generator=generator)
    context = x.shape[-1] / INPUT_SIZE
    scale = (0.9 + 0.2 * rand(n)) / context
    angle = (rand(n) - 0.5) * 2 * math.radians(12)
    flip = torch.where(rand(n) < 0.5, -1.0, 1.0)
    shift = (rand(n, 2) - 0.5) * 2 * 0.06 * 2 / context
    cos, sin = torch.cos(angle) * scale, torch.sin(angle) * scale
    theta = torch.stack([torch.stack([cos * flip, -sin, shift[:, 0]], 1), torch.stack([sin * flip, cos, shift[:, 1]], 1)], 1)
    grid = F.affine_grid(theta, (n, 1, INPUT_SIZE, INPUT_SIZE), align_corners=False)
    x = F.grid_sample(x, grid, padding_mode="border", align_corners=False)
    # photometry
    x = x.clamp(1e-4, 1).pow(torch.exp((rand(n, 1, 1, 1) - 0.5) * 0.8))
    mean = x.mean(dim=(2, 3), keepdim=True)
    x = (x - mean) * (0.6 + 0.8 * rand(n, 1, 1, 1)) + mean + (rand(n, 1, 1, 1) - 0.5) * 0.3
    low_res = rand(n) < 0.25
    if low_res.any():
        side = int(16 + 24 * rand(1).item())
        small = F.interpolate(x[low_res], size=(side, side), mode="bilinear", align_corners=False, antialias=True)
        x[low_res] = F.interpolate(small, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", align_corners=False)
    x = x + torch.randn(x.shape, generator=generator) * 0.03 * rand(n, 1, 1, 1)
    if x.shape[1] == 3:
        grey = rand(n) < 0.2
        x[grey] = (x[grey] * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True).expand(-1, 3, -1, -1)
    return erase(x.clamp(0, 1), generator)


def erase(x: torch.Tensor, generator: torch.Generator, share: float = 0.5) -> torch.Tensor:
    """Cover one random rectangle (4-16 % of the face, any aspect) with noise in ``share`` of the images, in place.

    Teaches the model to cope with occlusion (hands, microphones, glasses, beards).
    """
    n, _, h, w = x.shape
    rand = lambda *shape: torch.rand(*shape, generator=generator)
    for i in torch.nonzero(rand(n) < share).flatten().tolist():
        area = (0.04 + 0.12 * rand(1).item()) * h * w
        aspect = float(torch.exp((rand(1) - 0.5) * 1.4))
        eh, ew = min(h, max(2, int((area * aspect) ** 0.5))), min(w, max(2, int((area / aspect) ** 0.5)))
        top, left = int(rand(1).item() * (h - eh)), int(rand(1).item() * (w - ew))
        x[i, :, top : top + eh, left : left + ew] = rand(1, eh, ew)
    return x


def balanced_weights(labels: np.ndarray, sources: np.ndarray, groups: np.ndarray | None = None,
                     source_balance: str = "size") -> np.ndarray:
    """Sampling weights giving every (group, class) cell of a source an equal share of its draws.

    Each source gets its share of the images (``source_balance="size"``) or an
    equal share (``"equal"``: a large set such as FER2013 does not drown the
    others); ``groups`` (e.g. CelebA's ``male``, None where unknown) stops the
    model learning one group's smile rate as a prior.
    """
    if source_balance not in ("size", "equal"):
        raise ValueError(f"source_balance must be 'size' or 'equal', not {source_balance!r}")
    groups = np.array([None] * len(labels), dtype=object) if groups is None else np.asarray(groups, dtype=object)
    weights = np.zeros(len(labels))
    for source in np.unique(sources):
        in_source = sources == source
        share = in_source.sum() if source_balance == "size" else len(labels) / len(np.unique(sources))
        cells = set(zip(groups[in_source], labels[in_source]))
        for group, label in cells:
            mask = in_source & (labels == label) & (groups == group)
            weights[mask] = share / len(cells) / mask.sum()
    return weights / weights.sum()


def with_share(weights: np.ndarray, chosen: np.ndarray, share: float) -> np.ndarray:
    """Sampling weights rescaled so that the ``chosen`` images get ``share`` of the draws, the rest ``1 - share``."""
    if not 0 <= share <= 1:
        raise ValueError(f"a share of the draws is between 0 and 1, not {share}")
    out = np.asarray(weights, dtype=float).copy()
    if chosen.any() and (~chosen).any():
        out[chosen] *= share / out[chosen].sum()
        out[~chosen] *= (1 - share) / out[~chosen].sum()
    return out / out.sum()


class WeightAverage:
    """An exponential moving average of a model's weights and BatchNorm statistics (smoother, usually better)."""

    def __init__(self, model: torch.nn.Module, decay: float):
        self.decay, self.updates = decay, 0
        self.state = {k: v.detach().clone() for k, v in model.state_dict().items()}

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        self.updates += 1
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))  # short runs follow the model closely
        for key, value in model.state_dict().items():
            if value.is_floating_point():
                self.state[key].lerp_(value, 1 - decay)
            else:
                self.state[key].copy_(value)


def distillation_loss(logits: torch.Tensor, teacher: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of ``logits`` (the model's on inputs ``x``) toward ``teacher``'s probabilities on ``x``."""
    with torch.no_grad():
        target = torch.sigmoid(teacher(x))
    return F.binary_cross_entropy_with_logits(logits, target)


def click_trust(teacher_probs: torch.Tensor, labels: torch.Tensor, noise: float) -> torch.Tensor:
    """Probability that each label is right, given the teacher's probability of smiling and a share ``noise`` of wrong labels.

    Bayes with the teacher as prior: a label the teacher contradicts with confidence is more likely a wrong click
    than a face it got wrong, so it weighs less; ``noise`` 0 trusts every label (weight 1).
    """
    agree = torch.where(labels > 0.5, teacher_probs, 1 - teacher_probs)
    return (1 - noise) * agree / ((1 - noise) * agree + noise * (1 - agree)).clamp_min(1e-12)


def draw_weights(teacher, x: torch.Tensor, y: torch.Tensor, original: torch.Tensor, noise: float) -> torch.Tensor:
    """Label-loss weights of a batch: 1 for the original data's draws, ``click_trust`` for the extra draws."""
    weights = torch.ones_like(y)
    if noise and not original.all():
        with torch.no_grad():
            weights[~original] = click_trust(torch.sigmoid(teacher(x[~original])), y[~original], noise)
    return weights


def reads_colour(config: TrainConfig) -> bool:
    """Whether the network trained reads RGB faces (LiteNet's ``colour``; when fine-tuning, ``init_from``'s)."""
    arch_kwargs = checkpoint_meta(config.init_from).get("arch_kwargs", {}) if config.init_from else config.arch_kwargs
    return bool(arch_kwargs.get("colour"))


def load_split_crops(config: TrainConfig, split: str, progress=True) -> dict:
    """{dataset: (context crops, labels, samples)} for one split."""
    out = {}
    for name in config.datasets:
        samples = data_mod.select(data_mod.load_dataset(name, config.data_root), split, config.limit)
        crops, _ = data_mod.face_crops(samples, progress=progress, colour=reads_colour(config))
        out[name] = (crops, np.array([s.smiling for s in samples]), samples)
    return out


def faces_found(config: TrainConfig, split: str) -> dict:
    """{dataset: share of the split's faces the detector found} (the rest were cut at the dataset's median
    landmarks); the crops come from :func:`smilekit.learn.data.face_crops`' cache."""
    found = {}
    for name in config.datasets:
        samples = data_mod.select(data_mod.load_dataset(name, config.data_root), split, config.limit)
        found[name] = round(float(data_mod.face_crops(samples, progress=False)[1].mean()), 4)
    return found


def evaluate_sets(model, sets: dict, temperature: float = 1.0) -> tuple[dict, dict]:
    """Per-dataset summary figures and raw logits on centre crops."""
    results, logits = {}, {}
    for name, (crops, labels, _) in sets.items():
        logits[name] = logits_of(model, center(torch.from_numpy(crops)))
        results[name] = metrics.summary(labels, probabilities(logits[name], temperature))
    return results, logits


def train(config: TrainConfig, progress: bool = True) -> dict:
    """Train, keep the best epoch, calibrate on validation, test, write the checkpoint; returns a report."""
    if (config.distill or config.extra_noise) and not config.init_from:
        raise ValueError("distill and extra_noise read the outputs of init_from: give a checkpoint to fine-tune")
    seed_everything(config.seed)
    torch.set_num_threads(config.threads)
    workers = Workers(pick_device(config.device))
    device = workers.device
    progress = progress and workers.is_main
    out = Path(config.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    last_path = out.with_suffix(".last.pt")

    # data
    train_sets = load_split_crops(config, "train", progress)
    val_sets = load_split_crops(config, "val", progress)
    extra = [with_channels(c, 3 if reads_colour(config) else 1) for c, _ in config.extra_train]  # e.g. grey feedback crops
    crops = [c for c, _, _ in train_sets.values()] + extra
    labels = np.concatenate([l for _, l, _ in train_sets.values()] + [np.asarray(l) for _, l in config.extra_train])
    sources = np.concatenate([[n] * len(l) for n, (_, l, _) in train_sets.items()] + [["feedback"] * len(l) for _, l in config.extra_train])
    groups = np.array([s.male for _, _, samples in train_sets.values() for s in samples]
                      + [None] * sum(len(l) for _, l in config.extra_train), dtype=object)
    size = max(c.shape[1] for c in crops)
    crops = np.concatenate([c if c.shape[1] == size else _resize(c, size) for c in crops])
    crops_t, labels_t = torch.from_numpy(crops), torch.from_numpy(labels).float()
    weights = balanced_weights(labels, sources, groups, config.source_balance)
    if config.extra_share is not None:
        weights = with_share(weights, sources == "feedback", config.extra_share)
    weights = torch.from_numpy(weights)
    from_extra = torch.from_numpy(sources == "feedback")

    # model and optimiser
    if config.init_from:  # fine-tuning: the checkpoint's own architecture and weights
        model, base_meta = load_checkpoint(config.init_from)
        arch, arch_kwargs = base_meta["arch"], base_meta.get("arch_kwargs", {})
    else:
        model = build_model(config.arch, **config.arch_kwargs)
        arch, arch_kwargs = config.arch, getattr(model, "arch_kwargs", config.arch_kwargs)
    teacher = load_checkpoint(config.init_from)[0].to(device).eval() if config.distill or config.extra_noise else None
    averaged = build_model(arch, **arch_kwargs)  # holds the moving average for validation (on the CPU)
    layout = torch.channels_last if config.channels_last else torch.contiguous_format
    model.to(device, memory_format=layout)
    network = workers.wrap(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    steps_per_epoch = max(1, (config.draws_per_epoch or len(labels)) // config.batch_size // workers.world)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=config.lr, total_steps=config.epochs * steps_per_epoch, pct_start=0.15)
    state = {"epoch": 0, "best_score": -1.0, "best_epoch": -1, "history": []}
    ema = WeightAverage(model, config.ema_decay)
    if config.resume and last_path.is_file():
        saved = torch.load(last_path, map_location="cpu", weights_only=False)
        model.load_state_dict(saved["model"])
        ema.state, ema.updates = {k: v.to(device) for k, v in saved["ema"].items()}, saved["ema_updates"]
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        state = saved["state"]
    generator = torch.Generator().manual_seed(config.seed + state["epoch"])  # the same draws on every worker
    augment_generator = torch.Generator().manual_seed(config.seed + state["epoch"] + 7919 * (workers.rank + 1))

    # loop
    best_state = None
    for epoch in range(state["epoch"], config.epochs):
        network.train()
        started = time.time()
        order = torch.multinomial(weights, steps_per_epoch * config.batch_size * workers.world, replacement=True, generator=generator)
        order = order.view(-1, config.batch_size)[workers.rank :: workers.world]  # this worker's batches
        bar = tqdm(range(steps_per_epoch), desc=f"epoch {epoch + 1}/{config.epochs}", disable=not progress, mininterval=5)
        total_loss = total_right = 0.0
        for step in bar:
            idx = order[step]
            x = augment(crops_t[idx], augment_generator).to(device, memory_format=layout)
            y = labels_t[idx].to(device)
            logits = network(x)
            keep = ~from_extra[idx].to(device)
            weight = draw_weights(teacher, x, y, keep, config.extra_noise)
            loss = F.binary_cross_entropy_with_logits(logits, y, weight=weight)
            if config.distill and keep.any():  # the original data's draws keep the base's outputs
                loss = loss + config.distill * distillation_loss(logits[keep], teacher, x[keep])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            ema.update(model)
            total_loss += loss.item() * len(y)
            total_right += ((logits > 0).float() == y).sum().item()
            bar.set_postfix(loss=f"{total_loss / ((step + 1) * config.batch_size):.3f}", refresh=False)
        state["epoch"] = epoch + 1
        if not workers.is_main:  # the main worker validates and keeps the files
            if workers.share(False):
                break
            continue
        seen = steps_per_epoch * config.batch_size
        averaged.load_state_dict(ema.state)
        val, _ = evaluate_sets(averaged, val_sets)
        score = float(np.mean([v["balanced_accuracy"] for v in val.values()]))
        state["history"].append({"epoch": epoch + 1, "train_loss": total_loss / seen, "train_accuracy": total_right / seen,
                                 "val": val, "val_score": score, "seconds": time.time() - started})
        if progress:
            print(f"epoch {epoch + 1}: loss {total_loss / seen:.4f}, val balanced accuracy {score:.4f} "
                  + " ".join(f"{k}={v['accuracy']:.4f}" for k, v in val.items()), flush=True)
        if score > state["best_score"]:
            state["best_score"], state["best_epoch"] = score, epoch + 1
            best_state = {k: v.detach().cpu().clone() for k, v in ema.state.items()}
            torch.save({"model": best_state}, out.with_suffix(".best.pt"))
        torch.save({"model": model.state_dict(), "ema": ema.state, "ema_updates": ema.updates, "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                    "state": state}, last_path)
        stop = epoch + 1 - state["best_epoch"] >= config.patience
        if progress and stop:
            print(f"early stop: no better validation score since epoch {state['best_epoch']}")
        if workers.share(stop):
            break
    workers.close()
    if not workers.is_main:
        return {"worker": workers.rank}

    # best weights, calibration on validation, test figures, checkpoint
    if best_state is None:
        best_state = torch.load(out.with_suffix(".best.pt"), map_location="cpu", weights_only=True)["model"]
    model.to("cpu", memory_format=torch.contiguous_format).load_state_dict(best_state)
    _, val_logits = evaluate_sets(model, val_sets)
    temperature = metrics.fit_temperature(np.concatenate(list(val_logits.values())),
                                          np.concatenate([l for _, l, _ in val_sets.values()]))
    val, _ = evaluate_sets(model, val_sets, temperature)
    test, _ = evaluate_sets(model, load_split_crops(config, "test", progress), temperature)
    report = {
        "config": {k: v for k, v in asdict(config).items() if k != "extra_train"},
        "extra_train_images": int(sum(len(l) for _, l in config.extra_train)),
        "best_epoch": state["best_epoch"], "temperature": temperature,
        "val": val, "test": test, "history": state["history"],
    }
    data_desc = {name: {"train": int(len(train_sets[name][1])), "val": int(len(val_sets[name][1])),
                        "split": "split.csv of the dataset (train used for fitting, val for early stopping and temperature)"}
                 for name in config.datasets}
    report["faces_found"] = {split: faces_found(config, split) for split in ("train", "val", "test")}
    checkpoint = save_checkpoint(out, model, arch, arch_kwargs, temperature=temperature, data=data_desc,
                                 metrics={"val": val, "test": test}, trained_at=time.strftime("%Y-%m-%d %H:%M:%S"))
    report["version"] = checkpoint["version"]
    write_json(out.with_suffix(".json"), report)
    for tmp in (last_path, out.with_suffix(".best.pt")):
        tmp.unlink(missing_ok=True)
    return report


def _resize(crops: np.ndarray, size: int) -> np.ndarray:
    t = as_images(torch.from_numpy(crops)) * 255
    out = F.interpolate(t, size=(size, size), mode="bilinear", align_corners=False).round().clamp(0, 255).byte()
    return (out.permute(0, 2, 3, 1) if crops.ndim == 4 else out.squeeze(1)).numpy()
