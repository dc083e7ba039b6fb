"""Damaged and hostile model files: clear errors, and a planted pickle payload never runs.

Checksum mismatch, a missing weights file and an unknown format version are in
tests/integration/test_train_detect.py; an engine built for another GPU/TensorRT in
tests/unit/test_export.py (test_engine_mismatch_is_refused_clearly).
"""
from __future__ import annotations

import json
import os
import re
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from hgad_edge import fileio, artifact
from hgad_edge.artifact import ArtifactError
from hgad_edge.model.backbone import FeatureExtractor, load_state_dict_file
from hgad_edge.cli.commands import main as cli_main
from hgad_edge.detector import Detector

from .conftest import TINY_CLI

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class _Payload:
    """Unpickling this calls ``open(marker, "w")``: the file appearing means code ran."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _plant(path: str, marker: str) -> None:
    """A torch.save file that looks like a state dict but carries the payload."""
    torch.save({"conv_stem.weight": torch.zeros(2), "x": _Payload(marker)}, path)


def _copy(run: str, tmp_path, name: str = "copy") -> str:
    dst = str(tmp_path / name)
    shutil.copytree(run, dst)
    return dst


def _edit_meta(run_dir: str, edit) -> None:
    path = os.path.join(run_dir, artifact.META)
    with open(path, encoding="utf-8") as f:
        meta = json.load(f)
    edit(meta)
    meta[artifact.CONTENT_KEY] = artifact.content_checksum(meta)  # model.json's own checksum agrees too
    with open(path, "w", encoding="utf-8") as f:
        json.dump(meta, f)


def _rechecksum(run_dir: str) -> None:
    """What an attacker (or a careless copy tool) would do: make model.json agree with the files."""
    _edit_meta(run_dir, lambda m: m["files"].update({n: fileio.sha256(os.path.join(run_dir, n)) for n in m["files"]}))


def test_the_payload_is_live(tmp_path):
    """Guard: plain torch.load would run it, so the tests below can fail."""
    marker = str(tmp_path / "pwned")
    _plant(str(tmp_path / "evil.pt"), marker)
    torch.load(str(tmp_path / "evil.pt"), weights_only=False)
    assert os.path.exists(marker)


@pytest.mark.parametrize("target", [artifact.WEIGHTS, artifact.BACKBONE])
def test_pickle_planted_in_the_artifact_with_a_matching_checksum_never_runs(tiny_run, tmp_path, target):
    run = _copy(tiny_run, tmp_path)
    marker = str(tmp_path / "pwned")
    _plant(os.path.join(run, target), marker)
    _rechecksum(run)
    artifact.Artifact.read(run).to_dict()  # the checksum alone does not catch it
    with pytest.raises(ArtifactError, match=re.escape(target) + ".* as safetensors"):
        Detector(run, backend="torch")
    with pytest.raises(ArtifactError, match="as safetensors"):  # a damaged model, not a missing backend
        Detector(run, backend="auto")
    with pytest.raises(ArtifactError, match="as safetensors"):
        artifact.load_tensors(run, target)
    assert cli_main(["predict", run, str(tmp_path / "part.png"), "--out", str(tmp_path / "o"),
                     "--backend", "torch"]) == 2
    assert not os.path.exists(marker)


@pytest.mark.parametrize("name", ["evil.pt", "evil.pth", "evil.bin", "evil.safetensors"])
def test_pickle_as_user_backbone_weights_is_refused_and_never_runs(tmp_path, name):
    marker = str(tmp_path / "pwned")
    path = str(tmp_path / name)
    _plant(path, marker)
    with pytest.raises(ValueError, match=re.escape(path)):
        load_state_dict_file(path)
    with pytest.raises(ValueError, match=re.escape(path)):
        FeatureExtractor("efficientnet_lite0", [(3, 1.0)], weights=path)
    assert not os.path.exists(marker)


def test_pickle_as_cli_train_weights_exits_2_and_writes_no_model(tiny_root, tmp_path, capsys):
    marker = str(tmp_path / "pwned")
    evil = str(tmp_path / "backbone.pth")
    _plant(evil, marker)
    out = str(tmp_path / "run")
    code = cli_main(["train", "--data", tiny_root, "--out", out, "--weights", evil, "--epochs", "1", *TINY_CLI])
    assert code == 2
    assert "refusing to load" in capsys.readouterr().err
    assert not os.path.exists(marker)
    assert not os.path.exists(os.path.join(out, artifact.META))


def test_plain_state_dict_files_still_load(tmp_path):
    """The refusal is not blanket: a torch.save'd state dict of tensors (also nested) loads."""
    sd = {"a": torch.arange(3.0), "b": torch.ones(2, 2, dtype=torch.float16)}
    torch.save(sd, str(tmp_path / "w.pth"))
    torch.save({"state_dict": sd, "epoch": 3}, str(tmp_path / "ckpt.pth"))
    save_file(sd, str(tmp_path / "w.safetensors"))
    for name in ("w.pth", "ckpt.pth", "w.safetensors"):
        got = load_state_dict_file(str(tmp_path / name))
        assert set(got) == {"a", "b"} and torch.equal(got["b"], sd["b"]), name


@pytest.mark.filterwarnings("ignore:Detected pickle protocol:UserWarning")  # torch's, on the 3rd case
@pytest.mark.parametrize("content", [b"", b"not a weights file at all", b"\x80\x04K\x01."])
def test_garbage_user_weights_are_a_value_error_naming_the_file(tmp_path, content):
    for name in ("junk.pth", "junk.safetensors"):
        path = str(tmp_path / name)
        with open(path, "wb") as f:
            f.write(content)
        with pytest.raises(ValueError, match=re.escape(path)):
            load_state_dict_file(path)


def test_truncated_weights_with_an_updated_checksum(tiny_run, tmp_path):
    run = _copy(tiny_run, tmp_path)
    path = os.path.join(run, artifact.WEIGHTS)
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)
    _rechecksum(run)
    with pytest.raises(ArtifactError, match="cannot read .*weights.safetensors as safetensors"):
        Detector(run, backend="torch")


@pytest.mark.parametrize("damage, match", [
    (lambda p: open(p, "w").write('{"format": "hgad_edge", "format_version": 1'), "is not valid JSON"),
    (lambda p: open(p, "wb").write(b"\xff\xfe\x00garbage"), "is not valid JSON"),
    (lambda p: open(p, "w").write("[1, 2]"), "is not an hgad_edge model file"),
    (lambda p: open(p, "w").write('{"format": "onnx", "format_version": 1}'), "is not an hgad_edge model file"),
    (lambda p: open(p, "w").write('{"format": "hgad_edge"}'), "format version None"),
])
def test_damaged_model_json(tiny_run, tmp_path, damage, match):
    run = _copy(tiny_run, tmp_path)
    damage(os.path.join(run, artifact.META))
    with pytest.raises(ArtifactError, match=match):
        Detector(run, backend="torch")


@pytest.mark.parametrize("key", ["calibration", "feature_shapes", "model_config", "files"])
def test_model_json_missing_a_section_is_an_artifact_error(tiny_run, tmp_path, key):
    run = _copy(tiny_run, tmp_path)
    _edit_meta(run, lambda m: m.pop(key))
    with pytest.raises(ArtifactError, match=rf"incomplete: it lacks \['{key}'\]"):
        Detector(run, backend="torch")


def test_weights_not_listed_in_model_json_are_not_loaded_unchecked(tiny_run, tmp_path):
    run = _copy(tiny_run, tmp_path)
    _edit_meta(run, lambda m: m["files"].pop(artifact.WEIGHTS))
    with pytest.raises(ArtifactError, match="does not list .*weights.safetensors"):
        Detector(run, backend="torch")


def test_missing_backbone_and_not_a_directory(tiny_run, tmp_path):
    run = _copy(tiny_run, tmp_path)
    os.remove(os.path.join(run, artifact.BACKBONE))
    with pytest.raises(ArtifactError, match="backbone.safetensors listed in model.json is missing"):
        Detector(run, backend="torch")
    with pytest.raises(ArtifactError, match="model directory not found"):
        Detector(os.path.join(run, artifact.META), backend="torch")


@pytest.mark.parametrize("tamper", ["shape", "gmm key"])
def test_checksum_consistent_but_wrong_weights_are_an_artifact_error(tiny_run, tmp_path, tamper):
    run = _copy(tiny_run, tmp_path)
    path = os.path.join(run, artifact.WEIGHTS)
    w = load_file(path)
    if tamper == "shape":
        k = next(k for k in w if not k.startswith("gmm."))
        w[k] = torch.zeros(3, 3)
    else:
        w = {k: v for k, v in w.items() if k != "gmm.0.mu_intra"}
    save_file(w, path)
    _rechecksum(run)
    with pytest.raises(ArtifactError):
        Detector(run, backend="torch")


def test_library_never_calls_an_unsafe_loader():
    """Static guard: no pickle.load(s), and every torch.load passes weights_only=True."""
    offenders = []
    for folder in ("hgad_edge", "export"):
        for dirpath, _, files in os.walk(os.path.join(REPO, folder)):
            for name in files:
                if not name.endswith(".py"):
                    continue
                path = os.path.join(dirpath, name)
                with open(path, encoding="utf-8") as f:
                    src = f.read()
                for m in re.finditer(r"pickle\.loads?\(|torch\.load\(([^)]*)\)|joblib\.load\(|np\.load\(([^)]*)\)",
                                     src):
                    call = m.group(0)
                    safe = ("weights_only=True" in call if call.startswith("torch.load")
                            else "allow_pickle=True" not in call if call.startswith("np.load") else False)
                    if not safe:
                        offenders.append(f"{os.path.relpath(path, REPO)}: {call}")
    assert not offenders, offenders


def test_cli_with_the_default_auto_backend_reports_a_damaged_artifact_cleanly(tiny_run, tmp_path):
    run = _copy(tiny_run, tmp_path)
    marker = str(tmp_path / "pwned")
    _plant(os.path.join(run, artifact.WEIGHTS), marker)
    _rechecksum(run)
    assert cli_main(["predict", run, str(tmp_path / "part.png"), "--out", str(tmp_path / "o")]) == 2
    assert not os.path.exists(marker)
