"""Export: folded flow == FrEIA flow, ONNX graphs (checker, dynamic batch, parity), the full graph
with GMM scoring vs hgad_edge.gmm, provider order, and the TensorRT engine header / mismatch check."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from hgad_edge.config import ModelConfig
from hgad_edge.runtime import trt_compat
from hgad_edge.export.fold import FoldedFlow, FoldedFlows
from hgad_edge.runtime.ort import select_providers
from hgad_edge.gmm import GaussianMixture, reference_inter, reference_intra, reference_posterior, route, votes_of
from hgad_edge.model.hgad import HGAD


def _perturb(model: HGAD, seed: int = 0) -> HGAD:
    """Move every flow parameter and the feature statistics away from their (near identity) init."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.flows.parameters():
            if p.requires_grad:
                p.add_(0.2 * torch.randn(p.shape, generator=g))
        for l in range(model.n_levels):
            getattr(model, f"feat_mean_{l}").copy_(torch.randn(model.dims[l], generator=g))
            getattr(model, f"feat_std_{l}").copy_(0.5 + torch.rand(model.dims[l], generator=g))
        for prior in model.priors:
            prior.mu_delta.mul_(0.3)
            prior.phi_inter.copy_(torch.randn(prior.phi_inter.shape, generator=g))
            prior.phi_intra.copy_(torch.randn(prior.phi_intra.shape, generator=g))
    return model.eval()


@pytest.fixture(scope="module")
def model() -> HGAD:
    np.random.seed(0)  # soft permutations come from numpy's global RNG
    torch.manual_seed(0)
    cfg = ModelConfig(class_names=("a", "b"), image_size=64, coupling_blocks=2, n_intra=3, pos_dim=32)
    return _perturb(HGAD(cfg, backbone_weights="none"))


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def onnx_dir(model, tmp_path_factory) -> str:
    from hgad_edge.export.onnx_export import export_onnx

    out = str(tmp_path_factory.mktemp("onnx"))
    export_onnx(model, out, full_graph=True)
    return out


# ----------------------------------------------------------------------------- folding
@pytest.mark.parametrize("level", [0, 1, 2])
def test_folded_flow_equals_freia_float64(model, images, level):
    m64 = HGAD(model.cfg, backbone_weights="none")
    m64.load_state_dict(model.state_dict())
    m64 = m64.double().eval()
    feat = m64.extract_features(images.double())[level]  # (B, D, h, w)
    with torch.no_grad():
        ref = m64.flow_level(level, feat)
        z, logdet = FoldedFlow(m64, level, dtype=torch.float64)(feat)
    assert ref.logdet.abs().max() > 1.0  # a flow far from identity: the check has teeth
    torch.testing.assert_close(z, ref.z, rtol=0, atol=1e-10)
    torch.testing.assert_close(logdet, ref.logdet, rtol=0, atol=1e-10)


def test_folded_flow_equals_freia_float32(model, images):
    feats = model.extract_features(images)
    with torch.no_grad():
        out = FoldedFlows(model)(*feats)
        for l, f in enumerate(feats):
            ref = model.flow_level(l, f)
            zs = float(ref.z.abs().max())
            torch.testing.assert_close(out[2 * l], ref.z, rtol=0, atol=2e-5 * zs)
            torch.testing.assert_close(out[2 * l + 1], ref.logdet, rtol=0, atol=2e-5 * float(ref.logdet.abs().max()))


def test_folded_flow_has_no_condition_input(model):
    folded = FoldedFlow(model, 0)
    n, hidden = folded.blocks[0].bias_table.shape
    assert n == model.feature_shapes[0][0] * model.feature_shapes[0][1]
    assert hidden == model.flows[0].module_list[0].subnet[0].out_features
    assert folded.blocks[0].w_x.shape[0] == model.flows[0].module_list[0].splits[0]  # x1 only, no P columns


def test_fold_refuses_unsupported_blocks(model):
    from hgad_edge.export.fold import FoldedBlock

    block = model.flows[0].module_list[0]
    block.GIN = True
    try:
        with pytest.raises(ValueError, match="GIN"):
            FoldedBlock(block, model.position_condition(0))
    finally:
        block.GIN = False


# ----------------------------------------------------------------------------- ONNX graphs
def test_onnx_graphs_are_checker_clean_with_dynamic_batch(onnx_dir):
    import onnx

    for name in ("backbone.onnx", "flows.onnx", "model.onnx", "full_graph.onnx"):
        m = onnx.load(f"{onnx_dir}/{name}")
        onnx.checker.check_model(m, full_check=True)
        assert max(o.version for o in m.opset_import if o.domain in ("", "ai.onnx")) >= 17
        for t in list(m.graph.input) + list(m.graph.output):
            assert t.type.tensor_type.shape.dim[0].dim_param == "batch", (name, t.name)
    inputs = [i.name for i in onnx.load(f"{onnx_dir}/model.onnx").graph.input]
    assert inputs == ["image"]  # the positional condition is folded, not an input


@pytest.mark.parametrize("batch", [1, 3])
def test_onnxruntime_matches_unfolded_torch(model, images, onnx_dir, batch):
    from hgad_edge.runtime.ort import make_session

    x = images[:batch]
    sess = make_session(f"{onnx_dir}/model.onnx", threads=1)
    outs = sess.run(None, {"image": x.numpy()})
    with torch.no_grad():
        ref = model(x)
    for l, r in enumerate(ref):
        for got, want in ((outs[2 * l], r.z.numpy()), (outs[2 * l + 1], r.logdet.numpy())):
            assert got.shape == want.shape
            np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 * float(np.abs(want).max()))


def test_split_graphs_equal_merged(onnx_dir, images):
    from hgad_edge.runtime.ort import make_session

    x = images.numpy()
    merged = make_session(f"{onnx_dir}/model.onnx", threads=1).run(None, {"image": x})
    bb = make_session(f"{onnx_dir}/backbone.onnx", threads=1)
    feats = bb.run(None, {"image": x})
    fl = make_session(f"{onnx_dir}/flows.onnx", threads=1)
    split = fl.run(None, {o.name: f for o, f in zip(bb.get_outputs(), feats)})
    for a, b in zip(merged, split):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-5 * float(np.abs(b).max()))


def test_full_graph_matches_python_gmm(model, images, onnx_dir):
    """full_graph.onnx (routing on, and a given class) == flows → hgad_edge.gmm float64 reference."""
    from hgad_edge.runtime.ort import make_session

    sess = make_session(f"{onnx_dir}/full_graph.onnx", threads=1)
    x = images.numpy()
    given = np.array([-1, 0, 1], dtype=np.int64)
    out = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, {"image": x, "class_index": given})))
    # The reference GMM reads the z / log|det J| of the same ONNX network (model.onnx): what is
    # checked is the scoring part of the graph. (Eager-torch z differ by ~1e-5 relative, which a
    # random test model's sharp posteriors can turn into 1e-3 entropy differences.)
    net = make_session(f"{onnx_dir}/model.onnx", threads=1).run(None, {"image": x})
    levels = [(net[2 * l].astype(np.float64), net[2 * l + 1].astype(np.float64)) for l in range(model.n_levels)]
    arrays = [model.gmm_arrays(l) for l in range(model.n_levels)]
    for i in range(len(x)):
        inter = [reference_inter(z[i], a["mu"], a["log_pi_inter"]) for (z, _), a in zip(levels, arrays)]
        posterior = np.mean([m for _, m in inter], axis=0)  # (C,)
        np.testing.assert_allclose(out["posterior"][i], posterior, atol=1e-5)
        votes = [votes_of(reference_posterior(z[i], a["mu"], a["log_pi_inter"])) for (z, _), a in zip(levels, arrays)]
        c = route(votes, [m for _, m in inter]) if given[i] < 0 else int(given[i])
        assert out["routed_class"][i] == c
        for l, ((z, ld), a, (ent, _)) in enumerate(zip(levels, arrays, inter)):
            logp = reference_intra(z[i], ld[i], a["mu_intra"], a["log_pi_intra"], c)
            h, w = model.feature_shapes[l]
            np.testing.assert_allclose(out[f"logp_{l}"][i], logp.reshape(h, w), rtol=1e-5, atol=1e-4)
            np.testing.assert_allclose(out[f"entropy_{l}"][i], ent.reshape(h, w), rtol=1e-4, atol=1e-5)
    # and with the runtime path (Scorer): routed class → GaussianMixture.intra (native kernel when built)
    for l, (g, (z, ld)) in enumerate(zip([GaussianMixture(**a) for a in arrays], levels)):
        c = int(out["routed_class"][0])
        logp = g.intra(z[0].astype(np.float32), ld[0].astype(np.float32), c)
        np.testing.assert_allclose(out[f"logp_{l}"][0].ravel(), logp, rtol=1e-5, atol=1e-4)


def test_export_rejects_old_opset(model, tmp_path):
    from hgad_edge.export.onnx_export import export_onnx

    with pytest.raises(ValueError, match="opset must be >= 17"):
        export_onnx(model, str(tmp_path), opset=13)


# ----------------------------------------------------------------------------- runtime
def test_provider_order():
    every = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    assert select_providers("cuda", every) == every
    assert select_providers("cuda", ["CUDAExecutionProvider", "CPUExecutionProvider"]) == \
        ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert select_providers("cpu", every) == ["CPUExecutionProvider"]
    with pytest.raises(ValueError, match="no GPU provider"):
        select_providers("cuda", ["CPUExecutionProvider"])
    with pytest.raises(ValueError, match="device must be"):
        select_providers("tpu", every)


def _artifact(run_dir, **fields):
    """An in-memory Artifact of one class with only the fields a test needs."""
    from hgad_edge.artifact import Artifact
    from hgad_edge.config import ModelConfig

    base = dict(model_config=ModelConfig(class_names=("a",)), feature_shapes=[(2, 2)], dims=[8], calibration={})
    return Artifact(run_dir=str(run_dir), **{**base, **fields})


def test_make_backend_errors(tmp_path):
    from hgad_edge.runtime import make_backend

    with pytest.raises(RuntimeError, match="hgad-edge export"):
        make_backend("onnxruntime", _artifact(tmp_path))
    with pytest.raises(ValueError, match="unknown backend"):
        make_backend("coreml", _artifact(tmp_path))
    with pytest.raises(RuntimeError, match="--format openvino --precision fp32"):
        make_backend("openvino", _artifact(tmp_path))  # not exported
    with pytest.raises(ValueError, match="unknown precision 'fp8'"):
        make_backend("onnxruntime", _artifact(tmp_path), precision="fp8")
    with pytest.raises(ValueError, match="runs \\('fp32', 'bf16', 'int8'\\), not 'fp16'"):
        make_backend("openvino", _artifact(tmp_path), precision="fp16")
    failed = {"onnxruntime": {"status": "failed", "files": {}, "validation": {"max_rel_err": {"z": 0.5},
                                                                          "tolerance": 1e-3}}}
    with pytest.raises(RuntimeError, match="failed validation"):
        make_backend("onnxruntime", _artifact(tmp_path, exports=failed))


def test_package_import_does_not_import_tensorrt():
    import subprocess
    import sys

    code = ("import sys, hgad_edge.export, hgad_edge.runtime, hgad_edge.runtime.tensorrt, hgad_edge.runtime.registry, "
            "hgad_edge.export.tensorrt_build, hgad_edge.cli.export; "
            "bad = [m for m in ('tensorrt', 'pycuda', 'onnxruntime') if m in sys.modules]; "
            "print(bad); sys.exit(1 if bad else 0)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


# ----------------------------------------------------------------------------- TensorRT (CPU-side logic)
BUILT = {"gpu": "Orin", "compute_capability": "8.7", "tensorrt": "10.3.0"}


def test_engine_file_roundtrip(tmp_path):
    path = str(tmp_path / "model_fp16.engine")
    trt_compat.write_engine(path, b"\x00plan\xff", dict(BUILT, precision="fp16"))
    header, plan = trt_compat.read_engine(path)
    assert plan == b"\x00plan\xff" and header["precision"] == "fp16" and header["gpu"] == "Orin"
    (tmp_path / "other.engine").write_bytes(b"not an engine at all")
    with pytest.raises(ValueError, match="not an hgad_edge TensorRT engine"):
        trt_compat.read_engine(str(tmp_path / "other.engine"))


@pytest.mark.parametrize("here, what", [
    (dict(BUILT, compute_capability="7.2", gpu="Xavier"), "compute capability 8.7 vs 7.2"),
    (dict(BUILT, gpu="Orin Nano"), "GPU 'Orin' vs 'Orin Nano'"),
    (dict(BUILT, tensorrt="10.7.0"), "TensorRT 10.3.0 vs 10.7.0"),
])
def test_engine_mismatch_is_refused_clearly(here, what):
    with pytest.raises(trt_compat.EngineMismatchError, match="rebuild it here") as e:
        trt_compat.check_compatible(BUILT, here, "model_fp16.engine")
    assert what in str(e.value)
    trt_compat.check_compatible(BUILT, dict(BUILT))  # same device: no error


def test_tensorrt_backend_checks_header_before_tensorrt(tmp_path, monkeypatch):
    """Loading an engine built elsewhere fails with the mismatch message (TensorRT itself faked)."""
    from hgad_edge.runtime import tensorrt

    trt_compat.write_engine(str(tmp_path / "model_fp16.engine"), b"plan", dict(BUILT, precision="fp16"))
    meta = _artifact(tmp_path, exports={"tensorrt": {"default": "fp16",
                                                      "engines": {"fp16": {"file": "model_fp16.engine"}}}})

    class FakeCtx:
        def __init__(self, index):
            self.cuda = None

        def close(self):
            pass

    monkeypatch.setattr(trt_compat, "import_tensorrt", lambda: object())
    monkeypatch.setattr(trt_compat, "device_info", lambda index=0: dict(BUILT, compute_capability="9.0", gpu="H100"))
    monkeypatch.setattr(tensorrt, "CudaContext", FakeCtx)
    with pytest.raises(trt_compat.EngineMismatchError, match="compute capability 8.7 vs 9.0"):
        tensorrt.TensorRTBackend(meta, device="cuda")
    with pytest.raises(ValueError, match="device='cuda'"):
        tensorrt.TensorRTBackend(meta, device="cpu")


def test_tensorrt_import_error_says_what_to_install(monkeypatch):
    import builtins

    real = builtins.__import__

    def no_trt(name, *a, **k):
        if name == "tensorrt" or name.startswith("pycuda"):
            raise ImportError(f"No module named {name!r}")
        return real(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_trt)
    with pytest.raises(ImportError, match=r"pip install hgad_edge\[tensorrt\]"):
        trt_compat.import_tensorrt()
    with pytest.raises(ImportError, match=r"pip install hgad_edge\[tensorrt\]"):
        trt_compat.import_pycuda()


def test_weak_typing_by_version():
    assert trt_compat.has_weak_typing("10.3.0.26")
    assert not trt_compat.has_weak_typing("11.4.1")
    assert trt_compat.version_tuple("10.13.0.35") == (10, 13, 0, 35)


# ----------------------------------------------------------------------------- export config
def test_export_config_names_the_valid_options():
    from hgad_edge.export.pipeline import ExportConfig

    with pytest.raises(ValueError, match="onnx"):
        ExportConfig(formats=("coreml",))
    with pytest.raises(ValueError, match="fp16"):
        ExportConfig(precisions=("fp8",))
    with pytest.raises(ValueError, match="built by none of the formats"):
        ExportConfig(formats=("onnx",), precisions=("fp16",))  # fp16 is TensorRT's
    with pytest.raises(ValueError, match="on_gate_fail"):
        ExportConfig(on_gate_fail="ignore")
    with pytest.raises(ValueError, match="max_drop"):
        ExportConfig(max_drop=-0.1)
    cfg = ExportConfig(formats=("onnx", "openvino", "tensorrt"), precisions=("fp16", "int8", "bf16"))
    assert cfg.precisions_for("onnx") == ("int8", "bf16") and cfg.precisions_for("tensorrt") == ("fp16", "int8")
    assert cfg.precisions_for("openvino") == ("int8", "bf16")
    assert ExportConfig(formats=("tensorrt",)).precisions_for("tensorrt") == ("fp16",)  # the old default
    assert ExportConfig(formats=("tensorrt",)).precisions_for("onnx") == ()  # not asked for: no ORT variant
    with pytest.raises(ValueError, match="max_batch"):
        ExportConfig(max_batch=0)


def test_calibration_images_from_artifact_or_folder(tmp_path):
    import cv2

    from hgad_edge.export.pipeline import calibration_images

    (tmp_path / "a" / "good").mkdir(parents=True)
    for i in range(3):
        cv2.imwrite(str(tmp_path / "a" / "good" / f"{i}.png"), np.zeros((4, 4, 3), np.uint8))
    meta = _artifact(tmp_path, data={"root": str(tmp_path), "calibration_files": ["a/good/0.png", "a/good/1.png",
                                                                                  "gone.png"]})
    assert [p.rsplit("/", 1)[-1] for p in calibration_images(meta)] == ["0.png", "1.png"]  # missing ones dropped
    assert len(calibration_images(meta, override=str(tmp_path), limit=2)) == 2
    with pytest.raises(FileNotFoundError):
        calibration_images(meta, override=str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no images"):
        calibration_images(meta, override=str(tmp_path / "empty"))


@pytest.mark.parametrize("pad,pool", [(32, (1, 1)), (0, (3, 3)), (32, (3, 1))])
def test_export_with_padding_and_pooling(tmp_path, pad, pool):
    """The backbone's optional reflect padding, feature crop and neighbourhood pooling go into the graph."""
    from hgad_edge.export.onnx_export import export_onnx
    from hgad_edge.runtime.ort import make_session

    np.random.seed(1)
    cfg = ModelConfig(class_names=("a", "b"), image_size=64, coupling_blocks=2, n_intra=3, pos_dim=32,
                      levels=((3, 1.0), (3, 0.5)), pad=pad, pool=pool)
    model = _perturb(HGAD(cfg, backbone_weights="none"), seed=1)
    export_onnx(model, str(tmp_path))
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    outs = make_session(str(tmp_path / "model.onnx"), threads=1).run(None, {"image": x.numpy()})
    with torch.no_grad():
        ref = model(x)
    for l, r in enumerate(ref):
        np.testing.assert_allclose(outs[2 * l], r.z.numpy(), rtol=0, atol=1e-5 * float(r.z.abs().max()))
        np.testing.assert_allclose(outs[2 * l + 1], r.logdet.numpy(), rtol=0, atol=1e-5 * float(r.logdet.abs().max()))
