"""Which parts of the network to quantize: every INT8 plan (ONNX Runtime static QDQ and
OpenVINO/NNCF) measured on one trained model — accuracy gate drop on the synthetic defects,
image / pixel AUROC on the test set (class known, each plan with its own calibration) and the
network's latency at batch 1 (backbone + flows, all plans interleaved in rounds).

    python benchmarks/quant_sweep.py RUN_DIR --data DATA --threads 2

RUN_DIR must have the fp32 ONNX export; the candidates' graphs are written into a temporary copy.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import _common as C  # noqa: E402

THREADS = C.threads_from_argv(2)

import numpy as np  # noqa: E402

from hgad_edge import data  # noqa: E402
from hgad_edge.artifact import Artifact  # noqa: E402
from hgad_edge.evaluation.metrics import auroc  # noqa: E402
from hgad_edge.export import openvino_export as OV  # noqa: E402
from hgad_edge.export import precision as P  # noqa: E402
from hgad_edge.export import quantize as Q  # noqa: E402
from hgad_edge.export.pipeline import _int8_calibration_batch, _open_backend, _with_variant, ExportConfig  # noqa: E402
from hgad_edge.postprocess import Normalizer, score_map  # noqa: E402
from hgad_edge.preprocess import preprocess  # noqa: E402

ORT_PLANS = {
    "ort backbone": Q.QuantPlan(parts="backbone"),
    "ort backbone s8s8": Q.QuantPlan(parts="backbone", activation="int8"),
    "ort backbone percentile": Q.QuantPlan(parts="backbone", method="percentile"),
    "ort backbone -dw": Q.QuantPlan(parts="backbone", skip_depthwise=True),
    "ort backbone -first-last": Q.QuantPlan(parts="backbone", skip_first=True, skip_last=True),
    "ort flows": Q.QuantPlan(parts="flows"),
    "ort both": Q.QuantPlan(parts="both"),
    "ort both -dw": Q.QuantPlan(parts="both", skip_depthwise=True),
    "ort backbone -last": Q.QuantPlan(parts="backbone", skip_last=True),
    "ort both -last": Q.QuantPlan(parts="both", skip_last=True),
    "ort both -first-last": Q.QuantPlan(parts="both", skip_first=True, skip_last=True),
    "ort both -first-last-dw": Q.QuantPlan(parts="both", skip_first=True, skip_last=True, skip_depthwise=True),
    # every quantizable op (activations stay int8 between convs / matmuls)
    "ort flows all-ops": Q.QuantPlan(parts="flows", op_types=()),
    "ort backbone all-ops": Q.QuantPlan(parts="backbone", op_types=()),
    "ort backbone all-ops -first-last": Q.QuantPlan(parts="backbone", op_types=(), skip_first=True, skip_last=True),
    "ort both all-ops -first-last": Q.QuantPlan(parts="both", op_types=(), skip_first=True, skip_last=True),
}
OV_PLANS = {
    "ov backbone": OV.NNCFPlan(parts="backbone"),
    "ov backbone mixed": OV.NNCFPlan(parts="backbone", preset="mixed"),
    "ov backbone -dw": OV.NNCFPlan(parts="backbone", skip_depthwise=True),
    "ov backbone +bf16": OV.NNCFPlan(parts="backbone", inference_precision="bf16"),
    "ov flows": OV.NNCFPlan(parts="flows"),
    "ov flows +bf16": OV.NNCFPlan(parts="flows", inference_precision="bf16"),
    "ov both": OV.NNCFPlan(parts="both"),
    "ov both +bf16": OV.NNCFPlan(parts="both", inference_precision="bf16"),
}


def test_set(art: Artifact, root: str):
    samples = data.test_samples(root, art.class_names)
    frames = [data.read_image(s.path) for s in samples]
    masks = [data.read_mask(s.mask_path, f.shape[:2]) if s.is_anomaly else np.zeros(f.shape[:2], bool)
             for s, f in zip(samples, frames)]
    return samples, frames, masks


def test_auroc(art, backend, cal, samples, frames, masks):
    raws = P.score(backend, art, frames, [s.class_index for s in samples])
    img, pix = [], []
    for c, name in enumerate(art.class_names):
        idx = [i for i, s in enumerate(samples) if s.class_index == c]
        norm = Normalizer.from_dict(cal[name]["normalizer"])
        out = [score_map(raws[i], norm, art.image_size, art.combine, masks[i].shape) for i in idx]
        img.append(auroc(np.array([samples[i].is_anomaly for i in idx]), np.array([o[1] for o in out])))
        pix.append(auroc(np.stack([masks[i] for i in idx]), np.stack([o[0] for o in out])))
    return float(np.mean(img)), float(np.mean(pix))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("--data", required=True)
    ap.add_argument("--threads", type=int, default=THREADS)
    ap.add_argument("--frames", type=int, default=60, help="timed batch-1 network runs per plan")
    ap.add_argument("--round", type=int, default=5)
    ap.add_argument("--only", default="", help="comma-separated plan names (default: all)")
    a = ap.parse_args(argv)
    work = tempfile.mkdtemp(prefix="quant_sweep_")
    run = os.path.join(work, "run")
    shutil.copytree(a.model, run)
    art = Artifact.read(run)
    fp32 = art.exports["onnxruntime"]["files"]
    calib = _int8_calibration_batch(art, ExportConfig())
    held = P.held_out_set(art)
    samples, frames, masks = test_set(art, a.data)
    ref_be = _open_backend("onnxruntime", art, "fp32", a.threads)
    ref = P.reference(art, ref_be, held)
    ref_test = test_auroc(art, ref_be, art.calibration, samples, frames, masks)
    plans = {**ORT_PLANS, **OV_PLANS}
    if a.only:
        plans = {k: v for k, v in plans.items() if k in a.only.split(",")}
    results = {"fp32 (ort)": dict(drop=0.0, test=ref_test, build_s=0.0)}
    backends = {"fp32 (ort)": ref_be}
    for i, (name, plan) in enumerate(plans.items()):
        t0 = time.perf_counter()
        if name.startswith("ort"):
            files, _ = Q.quantize_network(run, fp32, calib, plan, suffix=f"c{i}")
            section = {"precision": "int8", "status": "passed", "files": files}
            trial = _with_variant(art, "onnxruntime", "int8", section)
            be = _open_backend("onnxruntime", trial, "int8", a.threads)
        else:
            stem = {"backbone": fp32["backbone"], "flows": fp32["flows"]}
            files = dict(stem)
            bb = os.path.join(run, fp32["backbone"])
            if plan.parts in ("backbone", "both"):
                f, _ = OV.quantize_part(bb, Q.backbone_feeds(calib, 1), plan, run, f"bb_c{i}")
                files["backbone"] = f["xml"]
            if plan.parts in ("flows", "both"):
                f, _ = OV.quantize_part(os.path.join(run, fp32["flows"]), Q.flow_feeds(bb, calib, 1), plan, run,
                                        f"fl_c{i}")
                files["flows"] = f["xml"]
            section = {"precision": "int8", "status": "passed", "files": files,
                       "inference_precision": plan.inference_precision}
            trial = _with_variant(art, "openvino", "int8", section)
            be = _open_backend("openvino", trial, "int8", a.threads)
        build = time.perf_counter() - t0
        g = P.calibrate_and_gate(trial, be, held, ref)
        test = test_auroc(trial, be, g["calibration"], samples, frames, masks)
        results[name] = dict(drop=g["accuracy_gate"]["drop"], gate=g["accuracy_gate"], test=test, build_s=build)
        backends[name] = be
        print(f"{name}: gate drop {g['accuracy_gate']['drop']:+.4f}, test image/pixel AUROC {test[0]:.4f}/{test[1]:.4f} "
              f"(fp32 {ref_test[0]:.4f}/{ref_test[1]:.4f}), build {build:.0f} s", flush=True)
    batch = preprocess(frames[:10], art.image_size)
    lat = {k: [] for k in backends}
    for be in backends.values():
        for j in range(5):
            be.run(batch[j:j + 1])
    load0 = C.load_average()
    k = 0
    while min(len(v) for v in lat.values()) < a.frames:
        for name, be in backends.items():
            for j in range(a.round):
                x = batch[(k + j) % len(batch)][None]
                t0 = time.perf_counter()
                be.run(x)
                lat[name].append((time.perf_counter() - t0) * 1e3)
        k += a.round
    load1 = C.load_average()
    print(f"\n{C.cpu_model()} ({', '.join(C.cpu_flags())}), {a.threads} threads, load {load0[0]:.2f} → {load1[0]:.2f}; "
          f"network (backbone + flows) batch 1, {a.frames} runs each, interleaved in rounds of {a.round}\n")
    print("| plan | gate drop | test image AUROC | test pixel AUROC | network p50 ms | vs fp32 |")
    print("|---|---:|---:|---:|---:|---:|")
    base = float(np.median(lat["fp32 (ort)"]))
    for name, r in results.items():
        med = float(np.median(lat[name]))
        print(f"| {name} | {r['drop']:+.4f} | {r['test'][0]:.4f} | {r['test'][1]:.4f} | {med:.2f} | {base / med:.2f}× |")
    for be in backends.values():
        be.close()
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
