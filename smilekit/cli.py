"""Command line: ``smilekit predict``, ``smilekit evaluate``, ``smilekit train``."""
from __future__ import annotations

import argparse
import json
import logging
import sys

from .images import ImageError


def _predictor(model):
    from .predict import Predictor

    return Predictor(model)


def summary(faces) -> dict:
    """A photo's faces in a few figures: how many, how many smile, and whether everyone does (false with no face)."""
    smiling = sum(1 for f in faces if f.smiling)
    return {"faces": len(faces), "smiling": smiling, "everyone_smiling": bool(faces) and smiling == len(faces)}


def cmd_predict(args) -> int:
    """One JSON object (or a readable line) per photo; errors are reported per photo, never as a traceback."""
    predictor = _predictor(args.model)
    failures = 0
    for path in args.paths:
        try:
            result = predictor.predict(path, whole_image=args.whole)
            record = {"path": path, "model_version": result.model_version, "faces": [f.to_dict() for f in result.faces],
                      "summary": summary(result.faces)}
        except (ImageError, OSError) as err:
            failures += 1
            record = {"path": path, "error": str(err) if isinstance(err, ImageError) else f"cannot read file: {err.strerror or err}"}
        if args.json:
            print(json.dumps(record), flush=True)
        elif "error" in record:
            print(f"{path}: error: {record['error']}", flush=True)
        else:
            faces = ", ".join(f"{'smiling' if f['smiling'] else 'not smiling'} ({f['probability']:.2f}) at {tuple(f['box'])}"
                              for f in record["faces"]) or "no face found"
            print(f"{path}: {faces}", flush=True)
    return 1 if failures else 0


def cmd_evaluate(args) -> int:
    """Figures for a ``smiling/`` + ``not_smiling/`` folder; photos without a detected face count as wrong."""
    from .data import load_folder
    from .evaluate import evaluate_photos

    samples = load_folder(args.folder, is_crop=args.crops)  # a wrong layout is reported before the model loads
    result = evaluate_photos(_predictor(args.model), samples, progress=not args.json)
    if args.json:
        print(json.dumps({k: result[k] for k in ("n", "accuracy", "balanced_accuracy", "roc_auc", "no_face")}))
    else:
        for key, value in result.items():
            print(f"{key:>18}: {value:.4f}" if isinstance(value, float) else f"{key:>18}: {value}")
    return 0


def cmd_train(args) -> int:
    from .train import TrainConfig, train

    config = TrainConfig(data_root=args.data_root, datasets=tuple(args.datasets), arch=args.arch, epochs=args.epochs,
                         batch_size=args.batch_size, lr=args.lr, seed=args.seed, out=args.out, limit=args.limit,
                         resume=args.resume, arch_kwargs={"width": args.width} if args.width else {}, device=args.device,
                         source_balance=args.source_balance, draws_per_epoch=args.draws_per_epoch, threads=args.threads)
    report = train(config)  # a missing data folder is reported by main()
    if "version" in report:  # under torchrun only the first worker reports
        print(json.dumps({"version": report["version"], "test": report["test"]}, indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="smilekit", description="Is each person in a photo smiling?")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("predict", help="find faces in photos and say whether each smiles")
    p.add_argument("paths", nargs="+", metavar="PATH")
    p.add_argument("--json", action="store_true", help="one JSON object per photo")
    p.add_argument("--whole", action="store_true", help="treat each image as one face crop")
    p.add_argument("--model", help="checkpoint file (default: promoted or shipped model)")
    p.set_defaults(run=cmd_predict)

    p = sub.add_parser("evaluate", help="accuracy on a folder with smiling/ and not_smiling/")
    p.add_argument("folder", metavar="DIR")
    p.add_argument("--crops", action="store_true", help="images are already face crops (no detection)")
    p.add_argument("--json", action="store_true", help="print one JSON line")
    p.add_argument("--model", help="checkpoint file (default: promoted or shipped model)")
    p.set_defaults(run=cmd_evaluate)

    from .data import LOADERS
    from .devices import DEVICES
    from .model import ARCHITECTURES
    from .train import TrainConfig

    defaults = TrainConfig()  # one source for the defaults of the CLI, the notebook and the code
    p = sub.add_parser("train", help="train a model on face data")
    p.add_argument("--data-root", help="folder with smilesmiled/ and celeba-subset/ (default $SMILEKIT_DATA)")
    p.add_argument("--datasets", nargs="+", default=list(defaults.datasets), choices=sorted(LOADERS))
    p.add_argument("--arch", default=defaults.arch, choices=sorted(ARCHITECTURES))
    p.add_argument("--width", type=int, help="SmileNet channels in its first stage (default 24)")
    p.add_argument("--epochs", type=int, default=defaults.epochs)
    p.add_argument("--batch-size", type=int, default=defaults.batch_size)
    p.add_argument("--lr", type=float, default=defaults.lr)
    p.add_argument("--seed", type=int, default=defaults.seed)
    p.add_argument("--limit", type=int, help="at most this many images per dataset and split")
    p.add_argument("--out", default=defaults.out)
    p.add_argument("--resume", action="store_true", help="continue from OUT's .last.pt")
    p.add_argument("--device", default=defaults.device, choices=DEVICES, help="where to train (auto: a GPU if present)")
    p.add_argument("--source-balance", default=defaults.source_balance, choices=("equal", "size"),
                   help="each dataset's share of the draws: equal, or its share of the images")
    p.add_argument("--draws-per-epoch", type=int, help="faces drawn per epoch (default: the training set's size)")
    p.add_argument("--threads", type=int, default=defaults.threads, help="CPU threads per process")
    p.set_defaults(run=cmd_train)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    try:
        return args.run(args)
    except FileNotFoundError as err:  # e.g. a missing model file
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
