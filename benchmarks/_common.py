"""Shared pieces of the latency benchmarks: threads, machine description, timing statistics,
the measured SGEMM peak, counted FLOPs, synthetic model artifacts and test frames.

Import this module first and call :func:`pin_threads` before numpy / torch / onnxruntime are
imported: OpenMP and OpenBLAS size their thread pools when they load.
"""
from __future__ import annotations

import json
import os
import platform
import sys
import time
from typing import Dict, List, Optional, Sequence

THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
STAGES = ("decode", "preprocess", "backbone", "flow", "gmm", "postprocess", "total")
# The headline settings: MVTec-like 15 classes, the default K = 10 intra-class centers and 8
# coupling blocks at 256².
DEFAULTS = dict(image_size=256, n_classes=15, n_intra=10, coupling_blocks=8)


def threads_from_argv(default: int = 2) -> int:
    """The ``--threads N`` of the command line (or ``default``), exported to OpenMP/BLAS now."""
    n = default
    if "--threads" in sys.argv[:-1]:
        n = int(sys.argv[sys.argv.index("--threads") + 1])
    pin_threads(n)
    return n


def pin_threads(n: int) -> None:
    for var in THREAD_VARS:
        os.environ[var] = str(n)


def load_average() -> tuple:
    return os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3


# ----------------------------------------------------------------------------- machine
def cpu_model() -> str:
    """``hgad_edge.evaluation.bench.cpu_name`` (one reader of /proc/cpuinfo), imported only when
    called: importing it here would load numpy before :func:`pin_threads`."""
    from hgad_edge.evaluation.bench import cpu_name

    return cpu_name()


def cpu_flags() -> List[str]:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("flags"):
                    have = set(line.split(":", 1)[1].split())
                    return [x for x in ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "amx_tile")
                            if x in have]
    except OSError:
        pass
    return []


def gpu_description() -> str:
    import torch

    if torch.cuda.is_available():
        return ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
    return "none (torch sees no CUDA device)"


def tensorrt_status() -> str:
    """'' when TensorRT can run here, else why not."""
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return "tensorrt not installed (pip install hgad_edge[tensorrt]) and no NVIDIA GPU on this machine"
    import torch

    if not torch.cuda.is_available():
        return f"tensorrt {tensorrt.__version__} installed but no CUDA GPU here"
    return ""


def machine(threads: int) -> Dict[str, object]:
    """Everything a reader needs to compare these numbers with theirs."""
    import numpy
    import torch

    versions = {"python": platform.python_version(), "numpy": numpy.__version__, "torch": torch.__version__}
    from importlib import metadata

    for mod, dist in (("onnxruntime", "onnxruntime"), ("timm", "timm"), ("FrEIA", "FrEIA"),
                      ("cv2", "opencv-python"), ("onnx", "onnx")):
        try:
            versions[mod] = __import__(mod).__version__
        except (ImportError, AttributeError):
            try:
                versions[mod] = metadata.version(dist)
            except metadata.PackageNotFoundError:
                versions[mod] = "-"
    from hgad_edge import __version__, gmm

    versions["hgad_edge"] = __version__
    native = f"hgad_edge._C ({gmm._C.cpu_threads()} OpenMP threads)" if gmm.has_native() else "numpy fallback (no _C)"
    try:
        import onnxruntime as ort

        providers = ort.get_available_providers()
    except ImportError:
        providers = []
    return {"cpu": cpu_model(), "cores": os.cpu_count(), "isa": cpu_flags(), "threads": threads,
            "torch_threads": torch.get_num_threads(), "gmm_kernel": native, "gpu": gpu_description(),
            "ort_providers": providers, "tensorrt": tensorrt_status() or "available",
            "versions": versions, "load_average": [round(x, 2) for x in load_average()],
            "platform": platform.platform()}


def machine_lines(m: Dict[str, object]) -> List[str]:
    v = m["versions"]
    la = m["load_average"]
    return [f"- CPU: {m['cpu']} — {m['cores']} logical cores visible, ISA {'/'.join(m['isa'])}",
            f"- threads used: {m['threads']} (torch {m['torch_threads']}, ORT intra-op {m['threads']}, "
            f"GMM kernel {m['gmm_kernel']})",
            f"- GPU: {m['gpu']}; ORT providers {', '.join(m['ort_providers'])}; TensorRT: {m['tensorrt']}",
            "- versions: " + ", ".join(f"{k} {x}" for k, x in v.items()),
            f"- load average (1/5/15 min) at start: {la[0]} / {la[1]} / {la[2]} — a shared box: other "
            "processes compete for the same cores",
            f"- platform: {m['platform']}"]


# ----------------------------------------------------------------------------- timing
def stats(ms: Sequence[float]) -> Dict[str, float]:
    import numpy as np

    a = np.asarray(ms, dtype=np.float64)
    if a.size == 0:
        return {"median": float("nan"), "p90": float("nan"), "p99": float("nan"), "mean": float("nan"), "n": 0}
    return {"median": float(np.median(a)), "p90": float(np.percentile(a, 90)), "p99": float(np.percentile(a, 99)),
            "mean": float(a.mean()), "min": float(a.min()), "n": int(a.size)}


def rss_mb() -> float:
    """Resident set size now (MiB)."""
    try:
        with open("/proc/self/status", encoding="utf-8") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far (MiB)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def sgemm_peak(threads: int, sizes: Sequence[int] = (1024, 2048), reps: Sequence[int] = (30, 6)
               ) -> Dict[str, object]:
    """GFLOP/s of n³ float32 matmuls at ``threads`` threads: numpy (OpenBLAS), torch, ONNX Runtime (MLAS).

    ``peak`` is the best run over libraries and sizes (the least disturbed: that is what a peak
    is on a shared box), ``median`` the best library's median rate under the current load.
    """
    import numpy as np
    import torch

    torch.set_num_threads(threads)
    out: Dict[str, object] = {"n": "/".join(map(str, sizes)), "reps": "/".join(map(str, reps))}
    names = []
    for n, r in zip(sizes, reps):
        a = np.random.default_rng(0).standard_normal((n, n)).astype(np.float32)
        b = np.ascontiguousarray(a.T)
        ta, tb = torch.from_numpy(a), torch.from_numpy(b)
        fns = [("numpy", lambda: a @ b), ("torch", lambda: ta @ tb)]
        ort_mm = _ort_matmul(n, threads)
        if ort_mm is not None:
            fns.append(("onnxruntime", lambda: ort_mm.run(None, {"a": a, "b": b})))
        for name, fn in fns:
            fn()
            ts = []
            for _ in range(r):
                t = time.perf_counter()
                fn()
                ts.append(time.perf_counter() - t)
            best, med = 2.0 * n ** 3 / min(ts) / 1e9, 2.0 * n ** 3 / float(np.median(ts)) / 1e9
            if best > out.get(name, 0.0):
                out[name], out[name + "_median"], out[name + "_n"] = best, med, n
            if name not in names:
                names.append(name)
    out["libraries"] = names
    out["peak"] = max(out[k] for k in names)
    out["median"] = max(out[k + "_median"] for k in names)
    return out


def _ort_matmul(n: int, threads: int):
    """An ONNX Runtime session of one (n, n) × (n, n) MatMul (MLAS SGEMM), or None without ORT."""
    try:
        import onnx
        import onnxruntime as ort
        from onnx import TensorProto, helper
    except ImportError:
        return None
    graph = helper.make_graph([helper.make_node("MatMul", ["a", "b"], ["c"])], "sgemm",
                              [helper.make_tensor_value_info("a", TensorProto.FLOAT, [n, n]),
                               helper.make_tensor_value_info("b", TensorProto.FLOAT, [n, n])],
                              [helper.make_tensor_value_info("c", TensorProto.FLOAT, [n, n])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


# ----------------------------------------------------------------------------- FLOPs
def count_flops(model, image_size: int, batch: int = 1) -> Dict[str, float]:
    """FLOPs per frame counted by torch's FlopCounterMode (GEMM / convolution multiply-adds × 2).

    ``backbone``: the frozen CNN at every level's input scale; ``flow``: the eager (unfolded)
    FrEIA flows; ``flow_folded``: the folded flows that the ONNX graph runs (the positional
    condition precomputed into bias tables). Elementwise ops (BN, activations, exp/tanh) are not
    counted — the roofline compares matmul-class work with the SGEMM peak.
    """
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from hgad_edge.export.fold import FoldedFlows

    x = torch.zeros(batch, 3, image_size, image_size)
    with torch.no_grad():
        with FlopCounterMode(display=False) as fc:
            feats = model.extract_features(x)
        backbone = fc.get_total_flops()
        with FlopCounterMode(display=False) as fc:
            model.flow(feats)
        flow = fc.get_total_flops()
        folded = FoldedFlows(model).eval()
        with FlopCounterMode(display=False) as fc:
            folded(*feats)
        flow_folded = fc.get_total_flops()
    return {"backbone": backbone / batch, "flow": flow / batch, "flow_folded": flow_folded / batch}


# ----------------------------------------------------------------------------- models
def class_names(n: int) -> tuple:
    return tuple(f"class_{i:02d}" for i in range(n))


def build_model(image_size: int = 256, n_classes: int = 15, n_intra: int = 10, coupling_blocks: int = 8,
                seed: int = 0, flows_from: Optional[str] = None):
    """An untrained HGAD with ImageNet backbone weights and ``n_classes`` synthetic classes.

    Latency does not depend on the trained values, only on the shapes. ``flows_from``: a model
    directory of the same image size and coupling blocks whose flows (and feature statistics)
    to reuse, so that its ONNX graphs describe this model too (C and K only change the mixture).
    """
    import numpy as np
    import torch

    from hgad_edge import artifact
    from hgad_edge.config import ModelConfig
    from hgad_edge.model.hgad import HGAD

    np.random.seed(seed)  # FrEIA's soft permutations
    torch.manual_seed(seed)
    cfg = ModelConfig(class_names=class_names(n_classes), image_size=image_size, n_intra=n_intra,
                      coupling_blocks=coupling_blocks)
    try:
        model = HGAD(cfg)
    except ImportError:  # no offline ImageNet weights: random ones time the same
        model = HGAD(cfg, backbone_weights="none")
    with torch.no_grad():
        if flows_from:
            w = artifact.load_tensors(flows_from, artifact.WEIGHTS)
            model.load_state_dict({k: v for k, v in w.items() if k.startswith(("flows.", "feat_"))}, strict=False)
        else:
            x = torch.from_numpy(_preprocessed(test_frames(2, seed=seed + 1), image_size))
            model.set_feature_stats(model.extract_features(x))
    return model.eval(), cfg


def _preprocessed(frames, size):
    from hgad_edge.preprocess import preprocess

    return preprocess(frames, size)


def model_key(image_size: int, n_classes: int, n_intra: int, coupling_blocks: int) -> str:
    """Cache name of a synthetic model; includes the default levels and pooling, so a cache built
    before a change of those defaults is not reused for the new ones."""
    from hgad_edge.config import ModelConfig

    d = ModelConfig(class_names=("x",))
    levels = "-".join(f"{a}@{b:g}" for a, b in d.levels)
    return f"s{image_size}_c{n_classes}_k{n_intra}_b{coupling_blocks}_l{levels}_p{''.join(map(str, d.pool))}"


def export_network(model, out_dir: str) -> None:
    """backbone.onnx + flows.onnx (what the ONNX Runtime backend runs), registered in model.json.

    The library's ``export_model`` also writes the merged model.onnx and validates against torch;
    the benchmark needs neither and the box is slow, so it writes only the two graphs it runs.
    """
    import torch

    from hgad_edge.export.fold import FoldedFlows
    from hgad_edge.export.onnx_export import DEFAULT_OPSET, FILES, BackboneGraph, _export, io_names

    names = io_names(model.n_levels)
    image = torch.zeros(2, 3, model.cfg.image_size, model.cfg.image_size)
    feats = tuple(model.extract_features(image))
    _export(BackboneGraph(model), (image,), os.path.join(out_dir, FILES["backbone"]), names["backbone_in"],
            names["backbone_out"], DEFAULT_OPSET)
    _export(FoldedFlows(model), feats, os.path.join(out_dir, FILES["flows"]), names["flows_in"],
            names["flows_out"], DEFAULT_OPSET)
    register_onnx(out_dir)


def register_onnx(out_dir: str) -> None:
    from hgad_edge.artifact import Artifact
    from hgad_edge.export.onnx_export import DEFAULT_OPSET, FILES

    info = {"files": {"backbone": FILES["backbone"], "flows": FILES["flows"]}, "opset": DEFAULT_OPSET,
            "precision": "fp32", "folded": True, "full_graph": False, "dynamic_batch": True,
            "status": "unvalidated", "validation": {"status": "not validated (synthetic latency-benchmark model)"}}
    Artifact.read(out_dir, verify=False).add_files([FILES["backbone"], FILES["flows"]],
                                                   update=lambda a: a.exports.__setitem__("onnxruntime", info))


def write_model(out_dir: str, image_size: int = 256, n_classes: int = 15, n_intra: int = 10,
                coupling_blocks: int = 8, onnx: bool = True, seed: int = 0, flows_from: Optional[str] = None) -> str:
    """A complete model directory (weights, calibration, ONNX graphs) for latency measurement.

    Reused when ``out_dir`` already holds one. Calibration constants come from three synthetic
    frames scored as class 0 and are shared by every class: they set thresholds, not timings.
    ``flows_from``: copy that directory's ONNX graphs instead of exporting (same S and blocks).
    """
    import shutil

    from hgad_edge import artifact
    from hgad_edge.runtime.eager import TorchBackend
    from hgad_edge.calibrate import calibrate_class
    from hgad_edge.config import TrainConfig
    from hgad_edge.gmm import GaussianMixture
    from hgad_edge.runtime.scorer import Scorer
    from hgad_edge.train.loop import write_artifact

    try:
        if not onnx or "onnxruntime" in artifact.Artifact.read(out_dir, verify=False).exports:
            return out_dir
    except artifact.ArtifactError:
        pass
    model, cfg = build_model(image_size, n_classes, n_intra, coupling_blocks, seed, flows_from)
    os.makedirs(out_dir, exist_ok=True)
    gmms = [GaussianMixture(**model.gmm_arrays(l)) for l in range(model.n_levels)]
    scorer = Scorer(TorchBackend(model), gmms, model.feature_shapes, image_size)
    raws = scorer.raw(test_frames(3, seed=seed + 2), [0, 0, 0])[0]
    cal = calibrate_class(raws, image_size)
    write_artifact(out_dir, model, cfg, TrainConfig(), {c: cal for c in cfg.class_names}, history=[])
    if onnx and flows_from:
        from hgad_edge.export.onnx_export import FILES

        for key in ("backbone", "flows"):
            shutil.copyfile(os.path.join(flows_from, FILES[key]), os.path.join(out_dir, FILES[key]))
        register_onnx(out_dir)
    elif onnx:
        export_network(model, out_dir)
    return out_dir


def model_dir(cache: str, image_size: int = 256, n_classes: int = 15, n_intra: int = 10,
              coupling_blocks: int = 8, onnx: bool = True) -> str:
    """The cached synthetic model of these settings (built on first use).

    Variants of C and K reuse the ONNX graphs of the (S, blocks) base model with C = 15, K = 10.
    """
    out = os.path.join(cache, model_key(image_size, n_classes, n_intra, coupling_blocks))
    base_key = (image_size, DEFAULTS["n_classes"], DEFAULTS["n_intra"], coupling_blocks)
    base = None
    if (image_size, n_classes, n_intra, coupling_blocks) != base_key:
        base = model_dir(cache, *base_key, onnx=onnx)
    return write_model(out, image_size, n_classes, n_intra, coupling_blocks, onnx=onnx, flows_from=base)


# ----------------------------------------------------------------------------- frames
def test_frames(n: int, height: int = 480, width: int = 640, seed: int = 0) -> list:
    """``n`` camera-like BGR uint8 frames (real photographs from scikit-image when available)."""
    import cv2
    import numpy as np

    photos = []
    try:
        from skimage import data as skd

        for name in ("coffee", "chelsea", "astronaut", "rocket"):
            img = getattr(skd, name)()
            photos.append(cv2.cvtColor(np.ascontiguousarray(img[..., :3]), cv2.COLOR_RGB2BGR))
    except ImportError:
        rng = np.random.default_rng(seed)
        photos = [rng.integers(0, 256, (height, width, 3), dtype=np.uint8) for _ in range(4)]
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        img = cv2.resize(photos[(i + seed) % len(photos)], (width, height), interpolation=cv2.INTER_AREA)
        noise = rng.integers(-8, 9, img.shape, dtype=np.int16)
        out.append(np.clip(img.astype(np.int16) + noise, 0, 255).astype(np.uint8))
    return out


def encoded_frames(n: int, seed: int = 0, quality: int = 90) -> list:
    """The frames of :func:`test_frames` as JPEG bytes (what a camera or file source delivers)."""
    import cv2

    return [cv2.imencode(".jpg", f, [cv2.IMWRITE_JPEG_QUALITY, quality])[1] for f in test_frames(n, seed=seed)]


def backend_list(text: str, known: Sequence[str]) -> List[str]:
    """'a,b' → ['a', 'b'], refusing names not in ``known`` (exits with the choices)."""
    names = [b for b in text.split(",") if b]
    bad = [b for b in names if b not in known]
    if bad:
        raise SystemExit(f"unknown backend(s) {bad}; choose from {tuple(known)}")
    return names


def write_json(path: Optional[str], res: dict) -> None:
    """The raw results as JSON when ``--json PATH`` was given."""
    if path:
        with open(path, "w", encoding="utf-8") as f:
            json.dump(res, f, indent=1)


def fmt(v: float, spec: str = ".2f") -> str:
    return "-" if v != v else format(v, spec)
