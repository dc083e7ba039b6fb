"""``hgad-edge export`` and ``hgad-edge bench``: thin shells over ``hgad_edge.export.pipeline``
(the build side, imported by the verb only) and ``hgad_edge.evaluation.bench``."""
from __future__ import annotations

import argparse

from hgad_edge.export.pipeline import FORMATS, PRECISIONS


def _cmd_export(a: argparse.Namespace) -> int:
    from hgad_edge.export.pipeline import ExportConfig, export_model

    if "triton" in (a.format or []):
        return _cmd_export_triton(a)
    formats = tuple(dict.fromkeys(["onnx"] + list(a.format or [])))  # TensorRT builds from the ONNX graph
    cfg = ExportConfig(formats=formats, precisions=tuple(dict.fromkeys(a.precision or ["fp16"])),
                       full_graph=a.full_graph, opset=a.opset, calib_data=a.calib_data,
                       calib_images=a.calib_images, max_batch=a.max_batch, workspace_mb=a.workspace_mb)
    art = export_model(a.run_dir, cfg)
    ort = art.exports["onnxruntime"]
    val = ort["validation"]
    print(f"ONNX (opset {ort['opset']}, folded flows): {', '.join(ort['files'].values())} → {a.run_dir}")
    print(f"  validation vs eager torch on {val['images']} {val['source']}: "
          + ", ".join(f"{k} {v:.1e}" for k, v in val["max_rel_err"].items()) + f" (relative) → {val['status']}")
    for p, e in art.exports.get("tensorrt", {}).get("engines", {}).items():
        print(f"TensorRT {p}: {e['file']} for {e['gpu']} (sm {e['compute_capability']}, TensorRT {e['tensorrt']})")
    return 0 if val["status"] == "passed" else 1


def _cmd_export_triton(a: argparse.Namespace) -> int:
    """``--format triton``: a Triton model repository (``triton.export_triton``); with
    ``--format tensorrt`` too, Triton's ONNX Runtime backend runs it through TensorRT."""
    from hgad_edge.export.triton import export_triton

    if not a.out:
        raise ValueError("--format triton needs --out MODEL_REPO")
    folder = export_triton(a.run_dir, a.out, name=a.model_name, max_batch=a.max_batch,
                           instance_kind=a.instance_kind, instance_count=a.instance_count,
                           accelerator="tensorrt" if "tensorrt" in a.format else "none",
                           precision=(a.precision or ["fp16"])[0], opset=a.opset, overwrite=a.overwrite)
    print(f"Triton model repository: {folder} (config.pbtxt, labels.txt, 1/model.onnx)")
    return 0


def _cmd_bench(a: argparse.Namespace) -> int:
    from hgad_edge import fileio

    from hgad_edge.evaluation.bench import format_table, rows_as_dicts, run_bench

    rows = run_bench(a.run_dir, a.data, device=a.device, threads=a.threads, frames=a.frames, warmup=a.warmup,
                     progress=not a.quiet)
    print(format_table(rows, a.threads))
    if a.json:
        fileio.write_json(a.json, rows_as_dicts(rows))
        print(f"rows written to {a.json}")
    return 0


def register(sub) -> None:
    """Add the ``export`` and ``bench`` verbs to the ``hgad-edge`` subparsers."""
    fmt = argparse.ArgumentDefaultsHelpFormatter
    s = sub.add_parser("export", formatter_class=fmt,
                       help="add ONNX graphs (folded flows) and TensorRT engines to a model directory")
    s.add_argument("run_dir", help="model directory written by `hgad-edge train`")
    s.add_argument("--format", action="append", choices=FORMATS + ("triton",),
                   help="repeatable; onnx is always written (TensorRT builds from it); triton writes a "
                        "Triton model repository into --out (with tensorrt: TensorRT accelerator)")
    s.add_argument("--precision", action="append", choices=PRECISIONS,
                   help="TensorRT engine precision, repeatable (default fp16)")
    s.add_argument("--full-graph", action="store_true",
                   help="also full_graph.onnx: backbone + flows + GMM scoring as ONNX ops (Triton, DeepStream)")
    s.add_argument("--opset", type=int, default=17, help="ONNX opset (>= 17)")
    s.add_argument("--calib-data", help="folder of normal images for INT8 calibration "
                                        "(default: the artifact's held-out calibration images)")
    s.add_argument("--calib-images", type=int, default=64, help="at most this many INT8 calibration images")
    s.add_argument("--max-batch", type=int, default=8, help="TensorRT optimization profile: batch 1..N")
    s.add_argument("--workspace-mb", type=int, default=1024, help="TensorRT builder workspace")
    s.add_argument("--out", help="--format triton: the MODEL_REPO folder")
    s.add_argument("--model-name", default="hgad_edge", help="--format triton: the model's folder in MODEL_REPO")
    s.add_argument("--instance-kind", choices=("gpu", "cpu"), default="gpu", help="--format triton: instance group")
    s.add_argument("--instance-count", type=int, default=1, help="--format triton: model instances per GPU / CPU")
    s.add_argument("--overwrite", action="store_true", help="--format triton: replace an existing model folder")
    s.set_defaults(func=_cmd_export)

    s = sub.add_parser("bench", formatter_class=fmt,
                       help="benchmark table: every backend × precision, accuracy and end-to-end latency")
    s.add_argument("run_dir")
    s.add_argument("--data", required=True, help="dataset root (MVTec layout) whose test split is scored")
    s.add_argument("--device", default="auto", help="auto (a CUDA GPU when visible, else cpu), cpu, cuda or cuda:N")
    s.add_argument("--threads", type=int, default=2, help="intra-op threads of every backend")
    s.add_argument("--frames", type=int, default=100, help="timed frames per row (after warm-up)")
    s.add_argument("--warmup", type=int, default=10)
    s.add_argument("--json", help="also write the rows as JSON here")
    s.add_argument("--quiet", action="store_true")
    s.set_defaults(func=_cmd_bench)
