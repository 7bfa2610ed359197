"""Seconds per training step (AdamW, one batch of 128 faces) per architecture, input size and memory layout.

Each row builds the network, runs two warm-up steps, then times ``--steps``
steps of forward, backward and optimiser on random 64x64 inputs, and prints the
median. The augmentation of one batch (``smilekit.learn.train.augment``) is timed
apart: it runs before every step. Run it alone: a busy machine multiplies
every figure (another job on the same cores is the usual cause of a slow row).

    python benchmarks/bench_train_step.py [--threads 2] [--steps 5] [--rows smilenet litenet:64 litenet:96:cl ...]

A row is ``arch[:input_px][:cl]``; ``cl`` puts the model and batch in
``torch.channels_last``.
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
import torch.nn.functional as F

from smilekit.learn.model import build_model
from smilekit.runtime import INPUT_SIZE
from smilekit.learn.train import augment

DEFAULT_ROWS = ("smilenet", "smilenet:cl", "litenet:64", "litenet:64:cl", "litenet:96:cl", "litenet:112:cl")


def parse_row(row: str) -> tuple[str, dict, bool]:
    """``"litenet:96:cl"`` -> ("litenet", {"input_px": 96}, True)."""
    parts = row.split(":")
    arch, channels_last = parts[0], "cl" in parts[1:]
    sizes = [int(p) for p in parts[1:] if p.isdigit()]
    return arch, ({"input_px": sizes[0]} if sizes else {}), channels_last


def seconds_per_step(arch: str, kwargs: dict, channels_last: bool, batch: int, steps: int) -> float:
    model = build_model(arch, **kwargs).train()
    layout = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=layout)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x = torch.rand(batch, 1, INPUT_SIZE, INPUT_SIZE).contiguous(memory_format=layout)
    y = (torch.rand(batch) < 0.5).float()
    times = []
    for step in range(steps + 2):
        started = time.perf_counter()
        loss = F.binary_cross_entropy_with_logits(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step >= 2:  # the first steps allocate and pick kernels
            times.append(time.perf_counter() - started)
    return statistics.median(times)


def augment_seconds(batch: int, repeats: int = 5) -> float:
    crops = torch.randint(0, 256, (batch, 80, 80), dtype=torch.uint8)
    generator = torch.Generator().manual_seed(0)
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        augment(crops, generator)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--rows", nargs="+", default=list(DEFAULT_ROWS))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    load = os.getloadavg()[0]
    print(f"torch {torch.__version__}, {args.threads} threads, batch {args.batch}, load average before {load:.2f}")
    print(f"augment one batch: {augment_seconds(args.batch):.3f} s")
    print(f"{'row':<18} s/step")
    for row in args.rows:
        arch, kwargs, channels_last = parse_row(row)
        print(f"{row:<18} {seconds_per_step(arch, kwargs, channels_last, args.batch, args.steps):.3f}", flush=True)
    print(f"load average after {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
