"""CPU precision tiers: ONNX Runtime int8, OpenVINO fp32/bf16/int8.

The exports build from a small model and are registered with their checksums; every reduced
precision scores with its own calibration (normalizers and thresholds computed with that
precision); the accuracy gate passes a good quantization and refuses a deliberately broken one
(calibrated on nonsense); OpenVINO fp32 gives ONNX Runtime fp32's maps; ``backend="auto"``
stays at fp32 unless asked and never takes a precision whose gate did not pass.

The model: brick + grass at 128², one coupling block, 8 epochs, half of the normal images held
out (8 per class): its fp32 synthetic-defect AUROC is ~0.94 / 0.80, high enough above chance
that a broken quantization shows. A model this small is noisier under quantization than the
demo model (measured drops of good int8 variants up to ~0.05), so the gate here runs with
``--max-drop 0.1``; the broken variant drops far more.
"""
from __future__ import annotations

import os
import shutil

import numpy as np
import pytest

from hgad_edge import data
from hgad_edge.artifact import Artifact
from hgad_edge.calibrate import threshold as quantile_threshold
from hgad_edge.detector import Detector

ov = pytest.importorskip("openvino", reason="the openvino extra is not installed (pip install hgad_edge[openvino])")
pytest.importorskip("nncf", reason="the openvino extra is not installed (pip install hgad_edge[openvino])")

MAX_DROP = 0.1  # the gate's tolerance for this small model (see the module docstring)
MAP_TOL = 1e-4  # OpenVINO fp32 vs ONNX Runtime fp32, relative to the map's range


def _has_bf16() -> bool:
    from hgad_edge.runtime.openvino import cpu_has_bf16

    return cpu_has_bf16()


BF16 = _has_bf16()
needs_bf16 = pytest.mark.skipif(not BF16, reason="this CPU has no native bf16 (AVX512_BF16 / AMX)")


@pytest.fixture(scope="module")
def gate_root(tmp_path_factory) -> str:
    from hgad_edge.data.demo import make_demo_data

    root = str(tmp_path_factory.mktemp("data") / "gate")
    make_demo_data(root, classes=("brick", "grass"), n_train=16, n_test_good=3, n_test_defect=5, image_size=128,
                   seed=0)
    return root


@pytest.fixture(scope="module")
def gate_model(gate_root, tmp_path_factory) -> str:
    from hgad_edge.config import ModelConfig, TrainConfig
    from hgad_edge.train.loop import train

    out = str(tmp_path_factory.mktemp("runs") / "gate")
    mcfg = ModelConfig(class_names=data.resolve_classes(gate_root, None), image_size=128, coupling_blocks=1, n_intra=2)
    train(gate_root, out, mcfg, TrainConfig(epochs=8, batch_size=8, seed=0, calib_fraction=0.5), progress=False)
    return out


@pytest.fixture(scope="module")
def tiers(gate_model, tmp_path_factory) -> str:
    """Every CPU tier, exported through the CLI."""
    from hgad_edge.cli import main

    run = str(tmp_path_factory.mktemp("tiers") / "run")
    shutil.copytree(gate_model, run)
    precisions = ["fp32", "int8"] + (["bf16"] if BF16 else [])
    argv = ["export", run, "--format", "onnx", "--format", "openvino", "--max-drop", str(MAX_DROP), "--quiet",
            "--threads", "2"] + [a for p in precisions for a in ("--precision", p)]
    assert main(argv) == 0
    return run


@pytest.fixture(scope="module")
def frames(tiers, gate_root):
    samples = data.test_samples(gate_root, Artifact.read(tiers).class_names)
    return [data.read_image(s.path) for s in samples]


def test_exports_build_and_are_registered(tiers):
    art = Artifact.read(tiers)  # verifies every checksum, the new files' included
    v = art.variants()
    want = {("onnxruntime", "fp32"), ("onnxruntime", "int8"), ("openvino", "fp32"), ("openvino", "int8")}
    assert want | ({("openvino", "bf16")} if BF16 else set()) == set(v)
    assert art.to_dict()["format_version"] == 4
    for (backend, p), sec in v.items():
        assert sec["status"] == "passed", (backend, p, sec.get("reason"))
        for name in sec["files"].values():
            assert name in art.files and os.path.isfile(art.path(name))
        if p == "fp32":
            assert "calibration" not in sec  # fp32 scores with the training calibration
            continue
        gate = sec["accuracy_gate"]
        assert gate["status"] == "passed" and gate["drop"] <= MAX_DROP and gate["max_drop"] == MAX_DROP
        assert gate["images"] == gate["defects"] == 16 and set(gate["per_class"]) == {"brick", "grass"}
        assert 0.85 <= gate["image_auroc_fp32"] <= 1.0  # the model is well above chance: a broken variant shows
        assert set(sec["calibration"]) == {"brick", "grass"}
    for backend, fp32_name, int8_name in (("onnxruntime", "{}.onnx", "{}_int8.onnx"),
                                          ("openvino", "{}.onnx", "{}_ov_int8.xml")):
        sec = v[(backend, "int8")]
        parts = {"both": ("backbone", "flows")}.get(sec["quantization"]["plan"]["parts"],
                                                    (sec["quantization"]["plan"]["parts"],))
        for part in ("backbone", "flows"):  # the quantized part has its own graph, the other stays fp32
            assert sec["files"][part] == (int8_name if part in parts else fp32_name).format(part)
            if part in parts:
                done = sec["quantization"][part]
                assert done.get("quantized_nodes", done.get("fake_quantize", 0)) > 0
    assert v[("onnxruntime", "int8")]["quantization"]["plan"]["format"] == "QDQ"
    assert v[("openvino", "fp32")]["validation"]["status"] == "passed"


def test_each_precision_uses_its_own_thresholds(tiers, frames):
    """The Detector takes normalizers and thresholds from the calibration of the variant it runs."""
    art = Artifact.read(tiers)
    combos = [("onnxruntime", "fp32"), ("onnxruntime", "int8"), ("openvino", "int8")] + ([("openvino", "bf16")] if BF16 else [])
    seen = {}
    for backend, p in combos:
        with Detector(tiers, backend=backend, precision=p, device="cpu", threads=1) as det:
            assert det.backend == backend and det.precision == p
            cal = art.calibration_of(backend, p)
            assert (cal is art.calibration) == (p == "fp32")
            for c, name in enumerate(det.class_names):
                assert det.thresholds[c] == quantile_threshold(cal[name]["scores"][det.combine], det.target_fpr)
                np.testing.assert_array_equal(det.normalizers[c].ll_pos_mean[0],
                                              np.asarray(cal[name]["normalizer"]["ll_pos_mean"][0], np.float32))
            seen[(backend, p)] = det.thresholds
            r = det(frames[0], class_name="brick")  # a result on that calibration's scale
            thr, spread = det.thresholds[0]
            assert r.score == pytest.approx(1.0 / (1.0 + np.exp(-(r.raw_score - thr) / spread)), rel=1e-6)
    assert seen[("onnxruntime", "int8")] != seen[("onnxruntime", "fp32")]  # int8 scores really shifted


def test_stored_calibration_is_what_the_detector_uses(tiers, tmp_path):
    """Moving the int8 variant's stored scores moves the int8 Detector's thresholds, not fp32's."""
    run = str(tmp_path / "run")
    shutil.copytree(tiers, run)
    art = Artifact.read(run)
    cal = art.exports["onnxruntime"]["variants"]["int8"]["calibration"]
    for name in cal:
        cal[name]["scores"] = {m: [s + 10.0 for s in v] for m, v in cal[name]["scores"].items()}
    art.write()
    with Detector(tiers, backend="onnxruntime", precision="int8", device="cpu") as a, \
            Detector(run, backend="onnxruntime", precision="int8", device="cpu") as b, \
            Detector(run, backend="onnxruntime", precision="fp32", device="cpu") as c, \
            Detector(tiers, backend="onnxruntime", precision="fp32", device="cpu") as d:
        for (ta, sa), (tb, sb) in zip(a.thresholds, b.thresholds):
            assert tb == pytest.approx(ta + 10.0) and sb == pytest.approx(sa)
        assert c.thresholds == d.thresholds


def test_openvino_fp32_matches_onnxruntime_fp32(tiers, frames):
    with Detector(tiers, backend="openvino", precision="fp32", device="cpu", threads=1) as a, \
            Detector(tiers, backend="onnxruntime", precision="fp32", device="cpu", threads=1) as b:
        worst = 0.0
        for f in frames:
            ra, rb = a(f), b(f)
            assert ra.class_name == rb.class_name
            span = float(rb.anomaly_map.max() - rb.anomaly_map.min())
            worst = max(worst, float(np.abs(ra.anomaly_map - rb.anomaly_map).max()) / span)
        assert worst <= MAP_TOL, f"worst relative map error {worst:.2e}"
        assert worst > 0.0  # really two runtimes


def test_openvino_fp32_sets_the_f32_hint(tiers):
    """OpenVINO's CPU plugin runs bf16 by default where the CPU has it: fp32 must ask for f32."""
    with Detector(tiers, backend="openvino", precision="fp32", device="cpu") as det:
        for compiled in det._backend._compiled:
            assert compiled.get_property("INFERENCE_PRECISION_HINT") == ov.Type.f32


def test_auto_prefers_fp32_and_honours_the_gate(tiers, tmp_path, caplog):
    from hgad_edge.runtime.registry import AUTO_ORDER

    cpu = [b for b in AUTO_ORDER if b in ("openvino", "onnxruntime")]
    with Detector(tiers, backend="auto", device="cpu") as det:
        assert (det.backend, det.precision) == (cpu[0], "fp32")  # no silent precision drop
    with Detector(tiers, backend="auto", precision="int8", device="cpu") as det:
        assert (det.backend, det.precision) == (cpu[0], "int8")
    # the first one's int8 kept although its gate was exceeded (--on-gate-fail warn): explicit use only
    run = str(tmp_path / "run")
    shutil.copytree(tiers, run)
    art = Artifact.read(run)
    art.variant(cpu[0], "int8")["accuracy_gate"]["status"] = "exceeded"
    art.write()
    with caplog.at_level("INFO", logger="hgad_edge.runtime.registry"):
        with Detector(run, backend="auto", precision="int8", device="cpu") as det:
            assert (det.backend, det.precision) == (cpu[1], "int8")
    assert any(f"{cpu[0]}: int8 did not pass its accuracy gate" in r.getMessage() for r in caplog.records)
    caplog.clear()
    with caplog.at_level("WARNING", logger="hgad_edge.runtime.registry"):
        with Detector(run, backend=cpu[0], precision="int8", device="cpu") as det:  # asked for: used, warned
            assert det.precision == "int8"
    assert any("accuracy gate did not pass" in r.getMessage() for r in caplog.records)


def test_precision_errors_name_the_options(tiers, tmp_path):
    with pytest.raises(ValueError, match="fp32"):
        Detector(tiers, precision="fp8")
    with pytest.raises(ValueError, match="runs .*fp32.*not 'fp16'"):
        Detector(tiers, backend="openvino", precision="fp16")
    with pytest.raises(ValueError, match="runs \\('fp32',\\)"):
        Detector(tiers, backend="torch", precision="int8")
    run = str(tmp_path / "run")
    shutil.copytree(tiers, run)
    art = Artifact.read(run)
    art.exports["onnxruntime"]["variants"] = {}
    art.exports.pop("openvino")
    art.write()
    with pytest.raises(RuntimeError, match="--format onnx --precision int8"):
        Detector(run, backend="onnxruntime", precision="int8")
    with pytest.raises(RuntimeError, match="--format openvino --precision fp32"):
        Detector(run, backend="openvino")


def test_gate_refuses_a_broken_quantization(tiers, tmp_path, monkeypatch, capsys):
    """INT8 calibrated on nonsense (noise 300× the input scale: every activation range far too
    wide, so real activations round to a few levels) is refused: recorded as failed with the
    measured drop, never loaded, marked in the bench table; the good variants stay."""
    from hgad_edge.cli import main
    from hgad_edge.export import pipeline

    run = str(tmp_path / "run")
    shutil.copytree(tiers, run)
    rng = np.random.default_rng(0)
    monkeypatch.setattr(pipeline, "_int8_calibration_batch",
                        lambda art, cfg: 300.0 * rng.standard_normal((8, 3, art.image_size, art.image_size),
                                                                     dtype=np.float32))
    assert main(["export", run, "--format", "onnx", "--precision", "int8", "--max-drop", str(MAX_DROP),
                 "--quiet"]) == 1
    out = capsys.readouterr().out
    assert "REFUSED" in out and "onnxruntime int8" in out
    art = Artifact.read(run)
    sec = art.variant("onnxruntime", "int8")
    gate = sec["accuracy_gate"]
    assert sec["status"] == "failed" and gate["status"] == "exceeded" and gate["drop"] > 2 * MAX_DROP
    assert "accuracy gate was exceeded" in art.skipped_variants()[("onnxruntime", "int8")]
    with pytest.raises(RuntimeError, match="accuracy gate was exceeded"):
        Detector(run, backend="onnxruntime", precision="int8", device="cpu")
    with Detector(run, backend="auto", precision="int8", device="cpu") as det:  # the good OpenVINO int8 remains
        assert (det.backend, det.precision) == ("openvino", "int8")
    assert art.variant("openvino", "int8")["status"] == "passed"  # kept: the fp32 graphs were current
    from hgad_edge.evaluation.bench import FAILED_VALIDATION, BenchRow, _candidates

    rows = {(b, p): f for b, p, f, _ in _candidates(art)}  # the bench lists it, with its files …
    assert rows[("onnxruntime", "int8")] == ["backbone_int8.onnx", "flows.onnx"]
    assert BenchRow("onnxruntime", "int8").status != FAILED_VALIDATION  # … and marks it (test_bench_rows_…)


def test_warn_keeps_an_exceeded_variant_for_explicit_use(tiers, tmp_path, monkeypatch):
    from hgad_edge.export import pipeline
    from hgad_edge.export.pipeline import ExportConfig, export_model

    run = str(tmp_path / "run")
    shutil.copytree(tiers, run)
    rng = np.random.default_rng(0)
    monkeypatch.setattr(pipeline, "_int8_calibration_batch",
                        lambda art, cfg: 300.0 * rng.standard_normal((8, 3, art.image_size, art.image_size),
                                                                     dtype=np.float32))
    art = export_model(run, ExportConfig(formats=("onnx",), precisions=("int8",), max_drop=MAX_DROP,
                                         on_gate_fail="warn"))
    sec = art.variant("onnxruntime", "int8")
    assert sec["status"] == "passed" and sec["accuracy_gate"]["status"] == "exceeded"
    assert not art.gate_passed("onnxruntime", "int8") and "int8" in art.usable_precisions("onnxruntime")


def test_bench_rows_for_every_tier(tiers, gate_root, tmp_path, capsys):
    """Every backend × precision has a row; a refused variant (here: OpenVINO int8 marked as the
    gate refuses it) is listed with its gate drop and reason, and not run."""
    from hgad_edge.cli import main
    from hgad_edge.export.precision import gate_reason
    from hgad_edge.runtime.ort import bf16_fastmath_supported

    run = str(tmp_path / "run")
    shutil.copytree(tiers, run)
    art = Artifact.read(run)
    refused = art.variant("openvino", "int8")
    refused["accuracy_gate"].update(status="exceeded", drop=0.25)
    refused.update(status="failed", reason=gate_reason(refused["accuracy_gate"]))
    art.write()
    assert main(["bench", run, "--data", gate_root, "--frames", "3", "--warmup", "1", "--threads", "1",
                 "--quiet", "--no-rss"]) == 0  # peak RSS: the next test (a fresh process per row is slow)
    table = capsys.readouterr().out.split("\n\n")[0]
    head = [c.strip() for c in table.splitlines()[0].split("|")[1:-1]]
    rows = {tuple(c.strip() for c in line.split("|")[1:3]): dict(zip(head, [c.strip() for c in line.split("|")[1:-1]]))
            for line in table.splitlines()[2:] if line.startswith("| ")}
    assert head[-1] == "peak RSS MB" and "gate drop" in head and "size MB" in head
    for key in [("torch", "fp32"), ("onnxruntime", "fp32"), ("onnxruntime", "int8"), ("openvino", "fp32")] + (
            [("openvino", "bf16")] if BF16 else []):
        cells = rows[key]
        assert cells["status"] == "passed", cells
        assert float(cells["size MB"]) > 0 and float(cells["p50 ms"]) > 0 and 0.0 <= float(cells["img AUROC"]) <= 1.0
        assert (cells["gate drop"] == "-") == (key[1] == "fp32")
    cells = rows[("openvino", "int8")]
    assert cells["status"].startswith("exported but failed validation (its accuracy gate was exceeded")
    assert cells["gate drop"] == "+0.2500" and cells["p50 ms"] == "-"  # not run
    assert float(rows[("onnxruntime", "int8")]["gate drop"]) == pytest.approx(
        art.variant("onnxruntime", "int8")["accuracy_gate"]["drop"], abs=1e-4)
    # the int8 graph is smaller than the fp32 one; OpenVINO fp32 loads the same files as ONNX Runtime fp32
    assert float(rows[("onnxruntime", "int8")]["size MB"]) < float(rows[("onnxruntime", "fp32")]["size MB"])
    assert rows[("openvino", "fp32")]["size MB"] == rows[("onnxruntime", "fp32")]["size MB"]
    if not bf16_fastmath_supported():  # x86: ONNX Runtime has no bf16 kernels
        assert rows[("onnxruntime", "bf16")]["status"].startswith("not available here")
    assert rows[("tensorrt", "int8")]["status"].startswith("not available here")


def test_peak_rss_is_measured_in_a_fresh_process(tiers, gate_root):
    from hgad_edge.evaluation.bench import measure_peak_rss, peak_rss_mb

    paths = [s.path for s in data.test_samples(gate_root, Artifact.read(tiers).class_names)[:2]]
    ballast = np.ones(400 * 2**20, np.uint8)  # this process: ≥ 400 MiB more than the child will hold
    rss = measure_peak_rss(tiers, "onnxruntime", "int8", "cpu", 1, paths, frames=2)
    assert 50 < rss < peak_rss_mb() - 300, (rss, peak_rss_mb())  # the child's own peak, not this one's
    del ballast
    assert np.isnan(measure_peak_rss(tiers, "tensorrt", "int8", "cpu", 1, paths, frames=1))  # cannot run here: NaN
