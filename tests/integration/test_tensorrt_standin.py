"""The TensorRT path end to end on CPU: our builder, engine header, runner and device GMM path
against test-only stand-ins of ``tensorrt`` / ``pycuda`` (``tests/standins``: plans run by ONNX
Runtime on fake device memory that raises on out-of-range access; the CUDA GMM entry points
computed by the CPU kernel on that memory).

What this proves: the export registers engines (INT8 calibrator fed), the runner's buffers,
shapes, pointer offsets, routing order and copies are right (the results equal ONNX Runtime's
per frame), device and host paths agree, mismatched engines are refused, and ``close()``
releases everything in order. What it cannot prove: TensorRT's numerics (``tests/gpu``).
"""
from __future__ import annotations

import json
import os
import shutil
import threading

import numpy as np
import pytest

from hgad_edge import data
from hgad_edge import gmm as G
from hgad_edge.artifact import Artifact
from hgad_edge.detector import Detector
from hgad_edge.runtime import trt_compat
from tests.standins import install, standin_gpu  # noqa: F401  (fixture)
from tests.standins import tensorrt as standin_trt

PRECISIONS = ("fp32", "fp16", "int8")
MAP_TOL = 1e-4  # |TensorRT stand-in − ONNX Runtime| relative to the map range
needs_native = pytest.mark.skipif(G._C is None, reason="the device GMM path needs the hgad_edge._C extension")


def _plan_header(path: str) -> dict:
    _, plan = trt_compat.read_engine(path)
    assert plan.startswith(standin_trt.PLAN_MAGIC)
    (n,) = np.frombuffer(plan[len(standin_trt.PLAN_MAGIC):len(standin_trt.PLAN_MAGIC) + 4], "<u4")
    start = len(standin_trt.PLAN_MAGIC) + 4
    return json.loads(plan[start:start + int(n)].decode())


@pytest.fixture(scope="module")
def engine_run(trained_run, tmp_path_factory):
    """The trained model with ONNX + fp32/fp16/int8 engines, exported through the CLI."""
    from hgad_edge.cli import main

    run = str(tmp_path_factory.mktemp("trt_standin") / "run")
    shutil.copytree(trained_run, run)
    with pytest.MonkeyPatch.context() as mp:
        gpu = install(mp)
        rc = main(["export", run, "--format", "tensorrt"] + [a for p in PRECISIONS for a in ("--precision", p)])
        after = dict(live=gpu.live(), leaks=list(gpu.leaks), errors=list(gpu.errors),
                     retained=gpu.retained_contexts(), current=gpu.current_contexts())
    assert rc == 0
    return run, after


@pytest.fixture(scope="module")
def samples(engine_run, demo_root):
    run, _ = engine_run
    return data.test_samples(demo_root, Artifact.read(run).class_names)


@pytest.fixture(scope="module")
def frames(samples):
    return [data.read_image(s.path) for s in samples]


@pytest.fixture(scope="module")
def ort_det(engine_run):
    det = Detector(engine_run[0], backend="onnxruntime", device="cpu", threads=1)
    yield det
    det.close()


def assert_same(got, want, tol: float = MAP_TOL) -> None:
    assert got.class_name == want.class_name
    assert got.is_anomaly == want.is_anomaly
    span = float(np.ptp(want.anomaly_map))
    assert span > 0
    err = float(np.abs(got.anomaly_map - want.anomaly_map).max()) / span
    assert err <= tol, f"map error {err:.2e} of the range"
    assert abs(got.score - want.score) <= tol * max(1.0, abs(want.score))
    assert abs(got.class_confidence - want.class_confidence) <= 1e-5


def assert_same_raw(got, want, atol: float = 1e-5) -> None:
    assert got.class_index == want.class_index
    np.testing.assert_allclose(got.posterior, want.posterior, atol=atol)
    for a, b in zip(got.logp + got.entropy, want.logp + want.entropy):
        assert a.shape == b.shape
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=atol)


# ----------------------------------------------------------------------------- export
def test_export_builds_registered_engines(engine_run):
    run, after = engine_run
    art = Artifact.read(run)  # verifies every checksum, the engines' included
    info = art.exports["tensorrt"]
    assert sorted(info["engines"]) == sorted(PRECISIONS)
    assert info["status"] == "unvalidated"
    for p, e in info["engines"].items():
        assert e["file"] in art.files
        header, _ = trt_compat.read_engine(art.path(e["file"]), read_plan=False)
        assert header["precision"] == p and header["max_batch"] == 8 and header["image_size"] == art.image_size
        for k in ("gpu", "compute_capability", "tensorrt"):
            assert header[k] == e[k]
        assert header["gpu"].startswith("NVIDIA Standin") and header["tensorrt"] == standin_trt.__version__
        plan = _plan_header(art.path(e["file"]))
        assert plan["precision"] == {"fp16": p != "fp32", "int8": p == "int8", "tf32": p != "fp32"}  # fp32 means fp32
        assert plan["profiles"][0]["image"] == [[1, 3, 128, 128], [1, 3, 128, 128], [8, 3, 128, 128]]
    cal = _plan_header(art.path(info["engines"]["int8"]["file"]))["calibration"]
    assert cal["batches"] >= 1 and not cal["from_cache"]  # the calibrator was fed, not a stale cache
    assert info["engines"]["int8"]["calibration_batches"] == cal["batches"]
    leftovers = [f for f in os.listdir(run) if f.endswith((".tmp", ".calib"))]
    assert not leftovers, leftovers  # atomic writes, no calibration cache file
    # the builds released what they took (the calibrator's device buffer before its context)
    assert after == dict(live=[], leaks=[], errors=[], retained=[], current=[])


# ----------------------------------------------------------------------------- parity
@needs_native
@pytest.mark.parametrize("given", [False, True], ids=["routed", "class-given"])
def test_device_path_matches_onnxruntime(engine_run, standin_gpu, samples, frames, ort_det, given):  # noqa: F811
    """11 frames (> max batch 8: two chunks), class routed or given: the device GMM path gives
    ONNX Runtime's results frame by frame, and only maps come back from the device."""
    run, _ = engine_run
    idx = list(range(3, 14))
    batch = [frames[i] for i in idx]
    names = [samples[i].class_name for i in idx] if given else None
    with Detector(run, backend="tensorrt", device="cuda", precision="fp32") as det:
        assert det.backend == "tensorrt" and det.device == "cuda" and det.scorer.device_scoring()
        counts = standin_gpu.state.counts
        before = dict(counts)
        got = det.predict(batch, names)
        assert counts["route_cuda"] - before.get("route_cuda", 0) == len(batch)
        assert counts["execute_async_v3"] - before.get("execute_async_v3", 0) == 2  # 8 + 3
        z_bytes = sum(int(np.prod(det._backend._shape[f"z_{l}"][1:])) * 4 for l in range(det._backend.n_levels))
        back = counts["dtoh_bytes"] - before.get("dtoh_bytes", 0)
        assert back < len(batch) * z_bytes / 2  # maps + means + class, never z
        assert set(got[0].timings_ms) >= {"preprocess", "backbone", "flow", "gmm", "postprocess", "total"}
        assert got[0].timings_ms["flow"] == 0.0
        raws, _ = det.scorer.raw(batch, [None if not given else samples[i].class_index for i in idx])
    want = ort_det.predict(batch, names)
    for g, w in zip(got, want):
        assert_same(g, w)
    ort_raws, _ = ort_det.scorer.raw(batch, [None if not given else samples[i].class_index for i in idx])
    for g, w in zip(raws, ort_raws):
        assert_same_raw(g, w)


@needs_native
def test_batch_of_one_matches_onnxruntime(engine_run, standin_gpu, samples, frames, ort_det):  # noqa: F811
    run, _ = engine_run
    with Detector(run, backend="tensorrt", device="cuda", precision="fp32") as det:
        for i in (0, 9, 20):
            assert_same(det(frames[i]), ort_det(frames[i]))
            c = samples[(i + 10) % len(samples)].class_name  # a given class other than its own, too
            assert_same(det(frames[i], class_name=c), ort_det(frames[i], class_name=c))


@needs_native
def test_host_path_gives_the_device_numbers(engine_run, standin_gpu, frames, monkeypatch):  # noqa: F811
    """The same engine scored on the device (CUDA GMM) and on the host (z copied back, CPU GMM)."""
    run, _ = engine_run
    batch = frames[:10]
    with Detector(run, backend="tensorrt", device="cuda", precision="fp16") as det:
        assert det.precision == "fp16" and det.scorer.device_scoring()
        device = det.scorer.raw(batch, [None] * 5 + [2, 0, 1, 2, 0])[0]
        routes = standin_gpu.state.counts["route_cuda"]
        monkeypatch.setattr(G, "has_cuda", lambda: False)
        assert not det._backend.device_scoring and not det.scorer.device_scoring()
        host = det.scorer.raw(batch, [None] * 5 + [2, 0, 1, 2, 0])[0]
        assert standin_gpu.state.counts["route_cuda"] == routes  # really the host path
    for d, h in zip(device, host):
        assert_same_raw(d, h, atol=1e-6)
    with Detector(run, backend="tensorrt", device="cuda", gmm_backend="numpy") as det:
        assert not det.scorer.device_scoring()  # numpy mixtures: host path
        for d, h in zip(device[:5], det.scorer.raw(batch[:5], [None] * 5)[0]):
            assert_same_raw(d, h, atol=1e-4)


@needs_native
def test_half_z_outputs_take_the_fp16_kernel_path(engine_run, standin_gpu, frames, tmp_path, monkeypatch):  # noqa: F811
    """An engine whose z outputs are HALF: the device path passes z_half and fp16 offsets."""
    from hgad_edge.export.tensorrt_build import build_engine

    run = str(tmp_path / "run")
    shutil.copytree(engine_run[0], run)
    monkeypatch.setattr(standin_trt, "HALF_OUTPUTS", ("z_",))
    art = Artifact.read(run)
    header = build_engine(art.path("model.onnx"), art.path("model_fp16.engine"), "fp16", art.image_size, 4)
    art.add_files(["model_fp16.engine"], update=lambda a: a.exports["tensorrt"]["engines"]["fp16"].update(header))
    batch = frames[:6]
    with Detector(run, backend="tensorrt", device="cuda", precision="fp16") as det:
        be = det._backend
        assert be.max_batch == 4 and be._dtype["z_0"] == np.float16 and be._dtype["logdet_0"] == np.float32
        device = det.scorer.raw(batch, [None] * 6)[0]
        monkeypatch.setattr(G, "has_cuda", lambda: False)
        host = det.scorer.raw(batch, [None] * 6)[0]
    for d, h in zip(device, host):
        assert_same_raw(d, h, atol=1e-5)
    with Detector(run, backend="onnxruntime", device="cpu") as ort:
        for d, w in zip(device, ort.scorer.raw(batch, [None] * 6)[0]):
            assert d.class_index == w.class_index
            for a, b in zip(d.logp, w.logp):
                assert np.abs(a - b).max() <= 2e-2 * max(np.ptp(b), 1.0)  # z rounded to fp16


# ----------------------------------------------------------------------------- selection, refusal
def test_auto_picks_tensorrt_on_cuda(engine_run, standin_gpu):  # noqa: F811
    run, _ = engine_run
    with Detector(run, backend="auto", device="cuda") as det:
        assert det.backend == "tensorrt" and det.precision in PRECISIONS
    with Detector(run, device="auto") as det:  # pycuda sees the stand-in GPU
        assert det.backend == "tensorrt" and det.device == "cuda"
    with Detector(run, backend="onnxruntime", device="auto") as det:  # no GPU provider: ORT stays on CPU
        assert det.device == "cpu"
    with pytest.raises(ValueError, match="torch sees no CUDA GPU"):
        Detector(run, backend="torch", device="cuda")  # the stand-in GPU is not torch's
    standin_gpu.assert_released()


@pytest.mark.parametrize("change, message", [
    (dict(name="NVIDIA Other", compute_capability=(9, 0)), "compute capability 8.7 vs 9.0"),
    (dict(version="10.7.0"), "TensorRT 10.3.0 vs 10.7.0"),
])
def test_engine_for_another_device_is_refused(engine_run, standin_gpu, change, message):  # noqa: F811
    run, _ = engine_run
    if "version" in change:
        standin_gpu.set_tensorrt_version(change["version"])
    else:
        standin_gpu.set_device(**change)
    with pytest.raises(trt_compat.EngineMismatchError, match=message):
        Detector(run, backend="tensorrt", device="cuda")
    standin_gpu.assert_released()  # the refused backend released its context retain
    with Detector(run, backend="auto", device="auto") as det:  # auto falls back to ONNX Runtime on CPU
        assert det.backend == "onnxruntime" and det.device == "cpu"


def test_engine_checked_by_the_runtime_too(engine_run, standin_gpu, monkeypatch):  # noqa: F811
    """Header right but the plan from another TensorRT: deserialisation fails cleanly."""
    run, _ = engine_run
    monkeypatch.setattr(trt_compat, "check_compatible", lambda *a, **k: None)
    standin_gpu.set_tensorrt_version("10.7.0")
    with pytest.raises(RuntimeError, match="could not deserialize"):
        Detector(run, backend="tensorrt", device="cuda")
    standin_gpu.assert_released()


# ----------------------------------------------------------------------------- lifetime
def test_close_releases_everything(engine_run, standin_gpu, frames):  # noqa: F811
    run, _ = engine_run
    with Detector(run, backend="tensorrt", device="cuda", precision="int8") as det:
        det(frames[0])
        assert standin_gpu.live() and len(standin_gpu.retained_contexts()) == 1
        assert not standin_gpu.current_contexts()  # current only while working
        backend = det._backend
    standin_gpu.assert_released()  # every allocation freed, the context popped and released
    det.close()  # a second close is harmless
    backend.close()
    standin_gpu.assert_released()
    with pytest.raises(RuntimeError, match="closed"):
        det(frames[0])
    with pytest.raises(RuntimeError, match="closed"):
        det.scorer.raw(frames[:1], [None])
    with pytest.raises(RuntimeError, match="closed"):
        backend.run(np.zeros((1, 3, 128, 128), np.float32))


def test_scores_from_another_thread(engine_run, standin_gpu, frames, ort_det):  # noqa: F811
    """CUDA contexts are per thread: the backend makes its context current for each call."""
    run, _ = engine_run
    with Detector(run, backend="tensorrt", device="cuda", precision="fp32") as det:
        out = {}
        t = threading.Thread(target=lambda: out.setdefault("r", det(frames[1])))
        t.start()
        t.join()
        assert_same(out["r"], ort_det(frames[1]))
    standin_gpu.assert_released()


@needs_native
def test_standin_catches_misuse(engine_run, standin_gpu, frames):  # noqa: F811
    """The stand-ins fail where a GPU would: batch beyond the profile, an offset past a buffer,
    a second free."""
    cuda = standin_gpu.cuda
    run, _ = engine_run
    with Detector(run, backend="tensorrt", device="cuda", precision="fp32") as det:
        be = det._backend
        with be._ctx.active():
            assert not be.context.set_input_shape("image", (9, 3, 128, 128))  # profile max is 8
            with pytest.raises(RuntimeError, match="refused input shape"):
                be._set_shape((9, 3, 128, 128))
            g, n = det.scorer.gmms[0], be._n[0]
            end = int(be._dev["z_0"]) + be.max_batch * n * be._d[0] * 4  # one frame past the buffer
            g.inter_cuda(end, n, int(be._dev["gmm.entropy_0"]), int(be._dev["gmm.means"]), int(be._dev["gmm.votes"]),
                         stream=be.stream.handle)
            with pytest.raises(cuda.LaunchError, match="illegal memory access"):
                be.stream.synchronize()
            extra = cuda.mem_alloc(16)
            extra.free()
            with pytest.raises(cuda.LogicError, match="already freed"):
                extra.free()
        assert det(frames[0]).anomaly_map.shape == frames[0].shape[:2]  # still usable after the bad launch
    standin_gpu.assert_released()


# ----------------------------------------------------------------------------- CLI
def test_cli_predict(engine_run, standin_gpu, samples, tmp_path):  # noqa: F811
    from hgad_edge.cli import main

    run, _ = engine_run
    out = tmp_path / "pred"
    images = [samples[0].path, samples[-1].path]
    assert main(["predict", run, *images, "--out", str(out), "--backend", "tensorrt", "--device", "cuda"]) == 0
    rows = json.loads((out / "predictions.json").read_text())
    assert [r["image"] for r in rows] == images
    assert all(os.path.isfile(r["overlay"]) for r in rows)


def test_cli_eval_matches_onnxruntime(engine_run, standin_gpu, demo_root, tmp_path):  # noqa: F811
    from hgad_edge.cli import main

    run, _ = engine_run
    res = {}
    for backend, device in (("tensorrt", "cuda"), ("onnxruntime", "cpu")):
        path = tmp_path / f"{backend}.json"
        assert main(["eval", run, "--data", demo_root, "--backend", backend, "--device", device,
                     "--precision", "fp32", "--quiet", "--json", str(path)]) == 0
        res[backend] = json.loads(path.read_text())
    assert res["tensorrt"]["backend"] == "tensorrt"
    for mode in ("known", "auto"):
        for metric in ("image_auroc", "pixel_auroc"):
            a, b = res["tensorrt"]["mean"][mode][metric], res["onnxruntime"]["mean"][mode][metric]
            assert abs(a - b) <= 1e-3, (mode, metric, a, b)
    standin_gpu.assert_released()  # eval closes the detector it made


def test_cli_bench_rows(engine_run, standin_gpu, demo_root, tmp_path, capsys):  # noqa: F811
    from hgad_edge.cli import main

    run, _ = engine_run
    path = tmp_path / "bench.json"
    assert main(["bench", run, "--data", demo_root, "--device", "cuda", "--frames", "3", "--warmup", "1",
                 "--threads", "1", "--quiet", "--no-rss", "--json", str(path)]) == 0  # rss: a spawned child
    rows = {(r["backend"], r["precision"]): r for r in json.loads(path.read_text())}
    assert set(rows) >= {("tensorrt", p) for p in PRECISIONS}
    for p in PRECISIONS:
        r = rows[("tensorrt", p)]
        assert r["status"] == "passed", r
        assert r["p50_ms"] > 0 and 0.0 <= r["image_auroc"] <= 1.0 and r["size_mb"] > 0
        assert r["image_auroc"] == rows[("tensorrt", "fp32")]["image_auroc"]  # the stand-in runs fp32 numerics
        assert set(r["stages_ms"]) >= {"backbone", "gmm", "total"}
    assert "| tensorrt | fp32 | passed" in capsys.readouterr().out
    standin_gpu.assert_released()  # bench closes every detector


def test_stream_cli(engine_run, standin_gpu, samples, tmp_path):  # noqa: F811
    from hgad_edge.stream.cli import main

    run, _ = engine_run
    folder = tmp_path / "frames"
    folder.mkdir()
    for i, s in enumerate(samples[:4]):
        shutil.copy(s.path, folder / f"{i:03d}.png")
    events = tmp_path / "events.jsonl"
    assert main(["--model", run, "--source", str(folder), "--backend", "tensorrt", "--device", "cuda", "--headless",
                 "--jsonl", str(events), "--max-frames", "3", "--progress-every", "0"]) == 0
    lines = [json.loads(line) for line in events.read_text().splitlines()]
    scored = [e for e in lines if e["type"] == "frame"]
    assert len(scored) == 3 and lines[0]["backend"] == "tensorrt"
    assert {"backbone", "gmm"} <= set(scored[0]["timings_ms"])
    standin_gpu.assert_released()  # the stream closed its detector
