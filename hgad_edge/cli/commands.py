"""``hgad-edge`` command line: make-demo-data, train, eval, predict, and (``cli/export.py``)
export and bench; ``stream`` from ``hgad_edge.stream.cli``.

Thin shells over library functions; configuration dataclasses are built here only. Building the
parser imports nothing heavy (no torch, cv2, onnxruntime): ``hgad-edge --help`` stays fast.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Optional, Sequence, Tuple

from hgad_edge.parsing import OneLineParser
from hgad_edge import fileio
from hgad_edge.cli.outputs import check_output_dir, check_output_file, model_files
from hgad_edge.config import ModelConfig, TrainConfig
from hgad_edge.runtime.registry import add_arguments as add_runtime_arguments

log = logging.getLogger("hgad_edge")


def _class_list(text: str) -> Tuple[str, ...]:
    """'a,b' → ('a', 'b'); an empty list is refused (it would silently mean every class)."""
    names = tuple(n.strip() for n in text.split(","))
    if not any(names):
        raise argparse.ArgumentTypeError("--classes is empty: give comma-separated class names, or leave the "
                                         "flag out for every class")
    if not all(names):
        raise argparse.ArgumentTypeError(f"--classes {text!r} has an empty name")
    return names


def _parse_pool(text: str):
    try:
        return tuple(int(k) for k in text.split(","))
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"pool must look like '3,3,1' (one odd window per level), got {text!r}") from e


def _parse_levels(text: str):
    """'3@1,3@0.5,3@0.25' → ((3, 1.0), (3, 0.5), (3, 0.25))."""
    try:
        out = tuple((int(s), float(r)) for s, r in (item.split("@") for item in text.split(",")))
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"levels must look like '3@1,3@0.5' (stage@scale), got {text!r}") from e
    if not out:
        raise argparse.ArgumentTypeError("at least one level is needed")
    return out


class _Store(argparse.Action):
    """``store``, remembering that the flag was given: ``train --from`` refuses the architecture
    flags (the parent fixes them) and fills the others that were left out from the parent."""

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, values)
        setattr(namespace, "_given", set(getattr(namespace, "_given", ())) | {self.dest})


# The network is the parent's with --from: these flags cannot change it.
_ARCHITECTURE_FLAGS = ("image_size", "backbone", "weights", "levels", "pad", "pool", "coupling_blocks", "n_intra")


def _cmd_make_demo_data(a: argparse.Namespace) -> int:
    from hgad_edge.data.demo import format_summary, make_demo_data, summarize

    make_demo_data(a.out, classes=a.classes, n_train=a.n_train, n_test_good=a.n_test, n_test_defect=a.n_test,
                   image_size=a.image_size, seed=a.seed, overwrite=a.overwrite, n_test_stress=a.n_stress)
    print(format_summary(summarize(a.out)))
    print(f"demo dataset written to {a.out}")
    return 0


def _train_config(a: argparse.Namespace, epochs: int, target_fpr: float, batch_size: int) -> TrainConfig:
    return TrainConfig(epochs=epochs, batch_size=batch_size, lr=a.lr, lambda2=a.lambda_mi, seed=a.seed,
                       augment=a.augment, target_fpr=target_fpr, calib_fraction=a.calib_fraction)


def _cmd_add_classes(a: argparse.Namespace) -> int:
    """``train --from RUN --classes new,...``: add classes to a trained model (hgad_edge.train.extend)."""
    from hgad_edge.artifact import Artifact
    from hgad_edge.train import distributed
    from hgad_edge.train.defaults import ADD_BATCH_SIZE, ADD_EPOCHS
    from hgad_edge.train.extend import add_classes, check_new_classes
    from hgad_edge.train.loop import run_dir_lock

    given = getattr(a, "_given", set())
    fixed = [f"--{d.replace('_', '-')}" for d in _ARCHITECTURE_FLAGS if d in given]
    if fixed:
        raise ValueError(f"{', '.join(fixed)}: the network comes from the parent model {a.from_run} with --from; "
                         "leave the flag(s) out")
    if not a.classes:
        raise ValueError("--from needs --classes: the comma-separated classes to add to the model")
    epochs = a.epochs if "epochs" in given else ADD_EPOCHS
    tcfg = _train_config(a, epochs, a.target_fpr, a.batch_size if "batch_size" in given else ADD_BATCH_SIZE)
    _check_train_paths(a)
    check_new_classes(Artifact.read(a.from_run), a.data, a.classes)  # before RUN_DIR is made
    with run_dir_lock(a.out, distributed.current().is_main):  # one training per RUN_DIR at a time
        art = add_classes(a.from_run, a.data, ",".join(a.classes), a.out, tcfg, resume=a.resume,
                          progress=not a.quiet, replay=a.replay,
                          target_fpr=a.target_fpr if "target_fpr" in given else None,
                          replay_per_class=a.replay_buffer if "replay_buffer" in given else None)
    step = art.lineage[-1]
    moved = step["calibration"]["recalibrated"]
    print(f"added {len(step['added_classes'])} class(es) ({', '.join(step['added_classes'])}) to {a.from_run} "
          f"→ {a.out}: {len(art.class_names)} classes, {epochs} epochs, replay {step['replay']['kind']}; "
          f"old classes recalibrated: {', '.join(moved) if moved else 'none'}")
    return 0


def _check_train_paths(a: argparse.Namespace) -> None:
    """--out can hold a model and is not the dataset; --weights is a file (before anything loads)."""
    from hgad_edge.train.loop import check_run_dir

    check_run_dir(a.out)
    if a.data and os.path.isdir(a.data):
        out, root = os.path.realpath(a.out), os.path.realpath(a.data)
        if out == root or out.startswith(root + os.sep):
            raise ValueError(f"--out {a.out} is inside the dataset --data {a.data}: write the model elsewhere")
    if a.weights is not None and a.weights != "none" and not os.path.isfile(a.weights):
        raise ValueError(f"--weights {a.weights} is not a file"
                         + (" (it is a folder)" if os.path.isdir(a.weights) else " (it does not exist)"))


def _cmd_train(a: argparse.Namespace) -> int:
    from hgad_edge import data
    from hgad_edge.train.loop import train

    if a.from_run:
        return _cmd_add_classes(a)
    if a.replay != "auto":
        raise ValueError("--replay chooses how --from rehearses the old classes; it needs --from")
    if a.replay_buffer < 0:
        raise ValueError(f"--replay-buffer must be >= 0 (0: no buffer), got {a.replay_buffer}")
    tcfg = _train_config(a, a.epochs, a.target_fpr, a.batch_size)
    _check_train_paths(a)
    classes = data.resolve_classes(a.data, a.classes)
    defaults = ModelConfig(class_names=classes)
    mcfg = ModelConfig(class_names=classes, backbone=a.backbone, image_size=a.image_size,
                       levels=a.levels or defaults.levels, coupling_blocks=a.coupling_blocks, n_intra=a.n_intra,
                       pad=a.pad, pool=a.pool or ())
    art = train(a.data, a.out, mcfg, tcfg, resume=a.resume, backbone_weights=a.weights, progress=not a.quiet,
                replay_per_class=a.replay_buffer)
    last = art.history[-1] if art.history else {}
    print(f"trained {len(classes)} classes ({', '.join(classes)}) → {a.out}; final epoch losses: "
          + ", ".join(f"{k}={v:.4f}" for k, v in last.items() if k != "epoch"))
    return 0


def _cmd_eval(a: argparse.Namespace) -> int:
    from hgad_edge import data
    from hgad_edge.evaluation.evaluator import evaluate, format_table

    # refused before the model loads and the test split is scored, not after
    check_output_file("--json", a.json, model_files(a.run_dir))
    data.list_classes(a.data)
    report = evaluate(a.run_dir, a.data, classes=a.classes, backend=a.backend, device=a.device,
                      precision=a.precision, full=a.full, progress=not a.quiet)
    print(format_table(report))
    if a.json is not None:
        fileio.write_json(a.json, report)
        print(f"metrics written to {a.json}")
    return 0


def overlay_paths(images: Sequence[str], out_dir: str) -> list:
    """One overlay file per input image, unique and readable: the image's path relative to the
    folder all inputs share, kept as subfolders of ``out_dir`` (``brick/test/crack/000_overlay.png``).
    Two inputs that would still meet (``x.png`` and ``x.jpg``) keep their extension
    (``x_png_overlay.png``), and if even that meets another name, a short hash of the path. The
    same input given twice gets the same overlay."""
    import hashlib

    absolute = [os.path.abspath(p) for p in images]
    root = os.path.commonpath([os.path.dirname(p) for p in absolute])

    def name(path: str, level: int) -> str:
        rel = os.path.relpath(path, root)
        folder, base = os.path.split(rel)
        stem, ext = os.path.splitext(base)
        if level >= 1:
            stem += "_" + ext.lstrip(".").lower()
        if level >= 2:
            stem += "_" + hashlib.sha1(rel.encode()).hexdigest()[:8]
        return os.path.join(out_dir, folder, stem + "_overlay.png")

    level = dict.fromkeys(absolute, 0)
    while True:
        owners: dict = {}
        for p in level:
            owners.setdefault(os.path.normcase(name(p, level[p])), []).append(p)
        clashes = [ps for ps in owners.values() if len(ps) > 1]
        if not clashes:
            return [name(p, level[p]) for p in absolute]
        for ps in clashes:
            for p in ps:
                if level[p] >= 2:
                    raise ValueError(f"cannot give {ps} overlays of their own")
                level[p] += 1


def _check_predict_paths(a: argparse.Namespace, overlays: Sequence[str], predictions: str) -> None:
    from hgad_edge import data

    check_output_dir("--out", a.out)
    if os.path.realpath(a.out) == os.path.realpath(a.run_dir):
        raise ValueError(f"--out {a.out} is the model directory RUN_DIR: give overlays a folder of their own")
    for path in a.images:
        if not path or not os.path.isfile(path):
            raise ValueError(f"image {path!r} " + ("is a folder: give image files" if path and os.path.isdir(path)
                                                   else "does not exist"))
        if not data.is_image(path):
            raise ValueError(f"{path} is not an image file (readable: {', '.join(data.IMAGE_EXTENSIONS)})")
    # no output may be an input; a file can only be another under the same (resolved) name
    by_name: dict = {}
    for path in a.images:
        by_name.setdefault(os.path.basename(os.path.realpath(path)), {})[f"image {path}"] = path
    for out in list(overlays) + [predictions]:
        fileio.check_outputs({f"--out file {out}": out}, by_name.get(os.path.basename(os.path.realpath(out)), {}))


def _cmd_predict(a: argparse.Namespace) -> int:
    import cv2

    from hgad_edge import data
    from hgad_edge.detector import Detector
    from hgad_edge.overlay import draw_overlay

    overlays = overlay_paths(a.images, a.out)
    predictions = os.path.join(a.out, "predictions.json")
    _check_predict_paths(a, overlays, predictions)
    rows = []
    with Detector(a.run_dir, backend=a.backend, target_fpr=a.target_fpr, device=a.device,
                  precision=a.precision) as det:
        for path, out_path in zip(a.images, overlays):
            frame = data.read_image(path)
            r = det(frame, class_name=a.class_name)
            ok, buf = cv2.imencode(".png", draw_overlay(frame, r))
            if not ok:
                raise RuntimeError(f"could not encode overlay for {path}")
            fileio.write_bytes(out_path, buf.tobytes())  # creates --out and the subfolders
            rows.append({"image": path, "overlay": out_path, **r.summary()})
            print(f"{'ANOMALY' if r.is_anomaly else 'ok     '} score={r.score:.3f} class={r.class_name or 'unknown':<12} "
                  f"{r.timings_ms['total']:.1f} ms  {path}")
    fileio.write_json(predictions, rows)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(
        prog="hgad-edge",
        description="Unified visual anomaly detection (HGAD) for the edge: one model, many product classes.",
        epilog="Quick start: hgad-edge make-demo-data demo_data && hgad-edge train --data demo_data --out runs/demo "
               "&& hgad-edge eval runs/demo --data demo_data",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    fmt = argparse.ArgumentDefaultsHelpFormatter

    s = sub.add_parser("make-demo-data", formatter_class=fmt,
                       help="write a small multi-class MVTec-layout dataset from scikit-image photographs")
    s.add_argument("out", help="output folder (must not exist, be empty, or be one make-demo-data wrote with "
                               "--overwrite)")
    s.add_argument("--classes", type=_class_list, help="comma-separated subset of the demo classes")
    s.add_argument("--n-train", type=int, default=60, help="normal training images per class")
    s.add_argument("--n-test", type=int, default=20, help="normal and defective test images per class (each)")
    s.add_argument("--image-size", type=int, default=256, help="side of the written images")
    s.add_argument("--n-stress", type=int, default=0, help="defective test images per class of each stress kind "
                   "(large, lookalike; thin_crack on grass, gravel, tissue); 0: none")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--overwrite", action="store_true",
                   help="replace a demo dataset make-demo-data wrote there (never any other folder)")
    s.set_defaults(func=_cmd_make_demo_data)

    d = ModelConfig(class_names=("x",))
    t = TrainConfig()
    from hgad_edge.train.defaults import ADD_BATCH_SIZE, ADD_EPOCHS, REPLAY_MODES, REPLAY_PER_CLASS

    s = sub.add_parser("train", formatter_class=fmt, help="train one unified model on normal images of every class "
                       "(or add classes to a trained one: --from)")
    s.add_argument("--data", required=True, help="dataset root in MVTec AD layout (<class>/train/good/...)")
    s.add_argument("--out", required=True, help="RUN_DIR to write the model artifact into")
    s.add_argument("--classes", type=_class_list,
                   help="comma-separated classes (default: every class folder); with --from: the classes to add")
    s.add_argument("--from", dest="from_run", metavar="RUN",
                   help="add --classes to the trained model RUN (fine-tuned from its weights with a replay of its "
                        "classes) instead of training from scratch; the network flags come from RUN")
    s.add_argument("--replay", choices=REPLAY_MODES, default="auto",
                   help="with --from, how the old classes are rehearsed: their training images in --data, RUN's "
                        "feature buffer, or none; auto = images when --data has every old class, else the buffer")
    s.add_argument("--replay-buffer", type=int, default=REPLAY_PER_CLASS, action=_Store, metavar="N",
                   help="mosaic feature maps per class stored in the artifact for a later --from (0: none)")
    s.add_argument("--image-size", type=int, default=d.image_size, action=_Store, help="square input side S")
    s.add_argument("--backbone", default=d.backbone, action=_Store,
                   help="timm backbone (efficientnet_lite0/1/2 have offline weights)")
    s.add_argument("--weights", action=_Store, help="backbone weights file (safetensors or state dict) for other backbones")
    s.add_argument("--levels", type=_parse_levels, default=None, action=_Store,
                   help="feature levels as stage@scale, default " + ",".join(f"{a}@{b:g}" for a, b in d.levels))
    s.add_argument("--pad", type=int, default=d.pad, action=_Store,
                   help="reflect padding in pixels before the backbone, cropped off the feature maps "
                        "(a multiple of stride/scale of every level, e.g. 64 for the default levels)")
    s.add_argument("--pool", type=_parse_pool, default=None, action=_Store,
                   help="odd window per level (or one for all): each feature cell is averaged with its "
                        "neighbours before the flow, PatchCore-style; 1 = off. Default: 3 at the full-scale "
                        "levels, 1 at the downscaled ones (" + ",".join(map(str, d.pool)) + " for the default levels)")
    s.add_argument("--coupling-blocks", type=int, default=d.coupling_blocks, action=_Store)
    s.add_argument("--n-intra", type=int, default=d.n_intra, action=_Store, help="intra-class centers K per class")
    s.add_argument("--epochs", type=int, default=t.epochs, action=_Store,
                   help=f"training epochs (with --from: fine-tuning epochs, default {ADD_EPOCHS})")
    s.add_argument("--batch-size", type=int, default=t.batch_size, action=_Store,
                   help=f"images per optimizer step (with --from: default {ADD_BATCH_SIZE})")
    s.add_argument("--lr", type=float, default=t.lr, help="flow learning rate (centers get 3×); official HGAD: 2e-4")
    s.add_argument("--lambda-mi", type=float, default=t.lambda2,
                   help="weight λ2 of the mutual-information loss; official HGAD: 100")
    s.add_argument("--seed", type=int, default=t.seed)
    s.add_argument("--target-fpr", type=float, default=t.target_fpr, action=_Store,
                   help="default false-positive rate of thresholds (with --from: RUN's unless given)")
    s.add_argument("--calib-fraction", type=float, default=t.calib_fraction,
                   help="share of each class's normal images held out for calibration")
    s.add_argument("--augment", action="store_true", help="random flips/brightness (recomputes features per epoch)")
    s.add_argument("--resume", action="store_true",
                   help="continue from RUN_DIR's last complete epoch (also with --from); without --from, a finished "
                        "RUN_DIR trained with the same settings is kept as it is (nothing to do)")
    s.add_argument("--quiet", action="store_true", help="no progress bars")
    s.set_defaults(func=_cmd_train)

    s = sub.add_parser("eval", formatter_class=fmt, help="image/pixel AUROC, AUPRO and routing accuracy on the test split")
    s.add_argument("run_dir")
    s.add_argument("--data", required=True, help="dataset root in MVTec AD layout")
    s.add_argument("--classes", type=_class_list, help="comma-separated subset")
    add_runtime_arguments(s, backend_default="torch")
    s.add_argument("--full", action="store_true", help="also transductive scoring and every map combination")
    s.add_argument("--json", help="write the metrics as JSON here")
    s.add_argument("--quiet", action="store_true")
    s.set_defaults(func=_cmd_eval)

    s = sub.add_parser("predict", formatter_class=fmt, help="score images and write heatmap overlays")
    s.add_argument("run_dir")
    s.add_argument("images", nargs="+", help="image files")
    s.add_argument("--out", required=True, help="folder for overlays and predictions.json")
    s.add_argument("--class", dest="class_name", help="the product class (default: routed per image)")
    add_runtime_arguments(s)
    s.add_argument("--target-fpr", type=float, default=None, help="override the stored false-positive rate")
    s.set_defaults(func=_cmd_predict)
    for register in _extra_commands():
        register(sub)
    return p


def _extra_commands():
    """The verbs defined next to their subpackages: stream, export and bench."""
    from hgad_edge.cli import export as export_cli
    from hgad_edge.stream.cli import register as stream_register

    return [stream_register, export_cli.register]


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args) or 0)
    except (ValueError, OSError, ImportError, RuntimeError, FloatingPointError) as e:
        # one line, naming the problem (ArtifactError is a ValueError; NonFiniteLoss a
        # FloatingPointError; OSError covers a full disk, a folder given as a file, no permission);
        # -v adds the traceback
        log.debug("traceback of the error below", exc_info=True)
        message = " ".join(str(e).split()) or type(e).__name__
        print(f"hgad-edge {args.command}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
