"""``hgad-edge export`` and ``hgad-edge bench``: thin shells over ``hgad_edge.export.pipeline``
(the build side, imported by the verb only) and ``hgad_edge.evaluation.bench``."""
from __future__ import annotations

import argparse

from hgad_edge.export.pipeline import FORMATS, GATE_ACTIONS, MAX_DROP, PRECISIONS


def _cmd_export(a: argparse.Namespace) -> int:
    from hgad_edge.export.pipeline import ExportConfig, export_model

    if "triton" in (a.format or []):
        return _cmd_export_triton(a)
    # the fp32 ONNX graphs are always written (every other variant is built from them)
    formats = tuple(dict.fromkeys(a.format or ["onnx"]))
    cfg = ExportConfig(formats=formats, precisions=tuple(dict.fromkeys(a.precision or [])),
                       full_graph=a.full_graph, opset=a.opset, calib_data=a.calib_data,
                       calib_images=a.calib_images, max_batch=a.max_batch, workspace_mb=a.workspace_mb,
                       max_drop=a.max_drop, on_gate_fail=a.on_gate_fail, threads=a.threads, progress=not a.quiet,
                       reexport=a.reexport)
    art = export_model(a.run_dir, cfg)
    ort = art.exports["onnxruntime"]
    val = ort["validation"]
    print(f"ONNX (opset {ort['opset']}, folded flows): {', '.join(ort['files'].values())} → {a.run_dir}")
    print(f"  validation vs eager torch on {val['images']} {val['source']}: "
          + ", ".join(f"{k} {v:.1e}" for k, v in val["max_rel_err"].items()) + f" (relative) → {val['status']}")
    refused = []
    built = {("onnxruntime" if f == "onnx" else f, p) for f in formats for p in cfg.precisions_for(f)}
    for (backend, p), sec in art.variants().items():
        if backend == "tensorrt" or (backend, p) not in built or (backend, p) == ("onnxruntime", "fp32"):
            continue
        line = f"{backend} {p}: {', '.join(dict.fromkeys(sec.get('files', {}).values()))}"
        if "validation" in sec:
            line += f" — validation vs {sec['validation'].get('reference', 'eager torch')} " + ", ".join(
                f"{k} {v:.1e}" for k, v in sec["validation"]["max_rel_err"].items()) + f" → {sec['status']}"
        gate = sec.get("accuracy_gate")
        if gate:
            line += (f" — accuracy gate on {gate['images']} held-out images + {gate['defects']} synthetic defects: "
                     f"image AUROC {gate['image_auroc']:.4f} (fp32 {gate['image_auroc_fp32']:.4f}), pixel AUROC "
                     f"{gate['pixel_auroc']:.4f} (fp32 {gate['pixel_auroc_fp32']:.4f}), drop {gate['drop']:+.4f} "
                     f"(max {gate['max_drop']}) → {gate['status']}")
        if sec.get("status") == "failed":
            refused.append(f"{backend} {p}")
            line += " — REFUSED" + ("" if gate else f": {sec.get('reason', 'failed')}")
        print(line)
    for p, e in art.exports.get("tensorrt", {}).get("engines", {}).items():
        print(f"TensorRT {p}: {e['file']} for {e['gpu']} (sm {e['compute_capability']}, TensorRT {e['tensorrt']})")
    if refused:
        print(f"refused (recorded as failed, never loaded): {', '.join(refused)}; keep one for explicit use with "
              "--on-gate-fail warn, or accept a larger drop with --max-drop")
    return 0 if val["status"] == "passed" and not refused else 1


def _cmd_export_triton(a: argparse.Namespace) -> int:
    """``--format triton``: a Triton model repository (``triton.export_triton``); with
    ``--format tensorrt`` too, Triton's ONNX Runtime backend runs it through TensorRT."""
    from hgad_edge.cli.outputs import check_output_dir
    from hgad_edge.export.onnx_export import check_opset
    from hgad_edge.export.triton import export_triton

    if a.out is None:
        raise ValueError("--format triton needs --out MODEL_REPO")
    check_output_dir("--out", a.out)  # all refused before the model is loaded and exported
    check_opset(a.opset)
    for flag, value in (("--instance-count", a.instance_count), ("--max-batch", a.max_batch)):
        if value < 1:
            raise ValueError(f"{flag} must be >= 1, got {value}")
    folder = export_triton(a.run_dir, a.out, name=a.model_name, max_batch=a.max_batch,
                           instance_kind=a.instance_kind, instance_count=a.instance_count,
                           accelerator="tensorrt" if "tensorrt" in a.format else "none",
                           precision=(a.precision or ["fp16"])[0], opset=a.opset, overwrite=a.overwrite)
    print(f"Triton model repository: {folder} (config.pbtxt, labels.txt, 1/model.onnx)")
    return 0


def _cmd_bench(a: argparse.Namespace) -> int:
    from hgad_edge import fileio
    from hgad_edge.cli.outputs import check_output_file, model_files
    from hgad_edge.evaluation.bench import check_bench_args, format_table, rows_as_dicts, run_bench

    check_bench_args(a.frames, a.warmup, a.threads)  # refused before anything is measured
    check_output_file("--json", a.json, model_files(a.run_dir))
    rows = run_bench(a.run_dir, a.data, device=a.device, threads=a.threads, frames=a.frames, warmup=a.warmup,
                     progress=not a.quiet, rss=not a.no_rss)
    print(format_table(rows, a.threads))
    if a.json is not None:
        fileio.write_json(a.json, rows_as_dicts(rows))
        print(f"rows written to {a.json}")
    return 0


def register(sub) -> None:
    """Add the ``export`` and ``bench`` verbs to the ``hgad-edge`` subparsers."""
    fmt = argparse.ArgumentDefaultsHelpFormatter
    s = sub.add_parser("export", formatter_class=fmt,
                       help="add ONNX graphs (folded flows), INT8/BF16 variants, OpenVINO and TensorRT engines "
                            "to a model directory")
    s.add_argument("run_dir", help="model directory written by `hgad-edge train`")
    s.add_argument("--format", action="append", choices=FORMATS + ("triton",),
                   help="repeatable (default onnx); the fp32 ONNX graphs are always written (every other variant "
                        "is built from them); openvino: pip install hgad_edge[openvino]; triton writes a Triton "
                        "model repository into --out (with tensorrt: TensorRT accelerator)")
    s.add_argument("--precision", action="append", choices=PRECISIONS,
                   help="repeatable; built for every --format that has it: onnx fp32/int8 (bf16 on aarch64), "
                        "openvino fp32/bf16/int8, tensorrt fp32/fp16/int8. Default: fp32 (tensorrt: fp16). "
                        "Each reduced precision is calibrated with its own scores and must pass the accuracy gate")
    s.add_argument("--max-drop", type=float, default=MAX_DROP,
                   help="accuracy gate: largest accepted drop of image or pixel AUROC below fp32 on synthetic "
                        "defects drawn on the held-out normal images")
    s.add_argument("--on-gate-fail", choices=GATE_ACTIONS, default="refuse",
                   help="refuse: a variant over --max-drop is recorded as failed and never loaded (exit code 1); "
                        "warn: kept for explicit --precision use, never chosen by --backend auto")
    s.add_argument("--threads", type=int, default=None,
                   help="threads for scoring the held-out images during calibration and the gate")
    s.add_argument("--reexport", action="store_true",
                   help="rebuild the fp32 ONNX graphs even when the ones in RUN_DIR are current (this drops every "
                        "ONNX Runtime / OpenVINO variant built from them); by default they are kept and only the "
                        "requested variants are (re)built")
    s.add_argument("--quiet", action="store_true", help="no progress bars")
    s.add_argument("--full-graph", action="store_true",
                   help="also full_graph.onnx: backbone + flows + GMM scoring as ONNX ops (Triton, DeepStream)")
    s.add_argument("--opset", type=int, default=17, help="ONNX opset (>= 17)")
    s.add_argument("--calib-data", help="folder of normal images for the INT8 activation ranges (default: the "
                                        "artifact's held-out calibration images; thresholds and the gate always "
                                        "use those)")
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
    s.add_argument("--no-rss", action="store_true",
                   help="skip the peak-RSS column (measured in a fresh process per row)")
    s.add_argument("--quiet", action="store_true", help="no progress bars")
    s.set_defaults(func=_cmd_bench)
