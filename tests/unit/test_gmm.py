"""The fused GMM kernel (hgad_edge._C, CPU and CUDA) and its numpy fallback vs the float64 reference.

Every test draws fresh random inputs (never zeros), output buffers are poisoned first, and each
CPU test has a CUDA twin that skips with a visible reason when no GPU is present.
"""
from __future__ import annotations

import math
import os

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hgad_edge import gmm as G

try:
    import torch

    HAS_CUDA_DEVICE = G.has_cuda() and torch.cuda.is_available()
except ImportError:  # pragma: no cover - torch is a dependency
    torch = None
    HAS_CUDA_DEVICE = False

NO_GPU_REASON = ("CUDA twin: needs hgad_edge._C built with CUDA (has_cuda()=%s) and a visible GPU"
                 % G.has_cuda())
POISON = np.float32(-7.77e37)  # finite, so an unwritten element fails every comparison
RTOL = 1e-5  # float32 kernel vs float64 reference

NEEDS_NATIVE = pytest.mark.skipif(not G.has_native(), reason="hgad_edge._C not built")
NEEDS_GPU = [pytest.mark.gpu, pytest.mark.skipif(not HAS_CUDA_DEVICE, reason=NO_GPU_REASON)]
BACKENDS = [pytest.param("native", marks=NEEDS_NATIVE), "numpy"]
# (backend, device): both CPU backends, and the native kernel's CUDA twin (the only CUDA path)
BACKEND_DEVICES = [pytest.param("native", "cpu", marks=NEEDS_NATIVE, id="native-cpu"),
                   pytest.param("numpy", "cpu", id="numpy-cpu"),
                   pytest.param("native", "cuda", marks=[NEEDS_NATIVE] + NEEDS_GPU, id="native-cuda")]


# ----------------------------------------------------------------------------- helpers
def make_level(rng, n, c, k, d, spread=3.0, noise=1.0, tie_first=True, z_class=None):
    """A random level: separated centers, intra centers around them, z near random classes (or
    all near ``z_class``)."""
    mu = (rng.standard_normal((c, d)) * spread).astype(np.float32)  # (C, D)
    mu_intra = (mu[:, None, :] + rng.standard_normal((c, k, d))).astype(np.float32)  # (C, K, D)
    if tie_first:
        mu_intra[:, 0] = mu  # the model's layout: μ_{c,0} = μ_c
    a = rng.standard_normal(c) * 0.5
    log_pi_inter = (a - np.log(np.exp(a).sum())).astype(np.float32)  # (C,)
    b = rng.standard_normal((c, k)) * 0.5
    log_pi_intra = (b - np.log(np.exp(b).sum(1, keepdims=True))).astype(np.float32)  # (C, K)
    cls = rng.integers(0, c, size=n) if z_class is None else np.full(n, z_class)
    z = (mu[cls] + rng.standard_normal((n, d)) * noise).astype(np.float32)  # (N, D)
    logdet = (rng.standard_normal(n) * 10).astype(np.float32)  # (N,)
    return dict(mu=mu, log_pi_inter=log_pi_inter, mu_intra=mu_intra, log_pi_intra=log_pi_intra), z, logdet


def relerr(x, ref) -> float:
    """max |x - ref| / max(|ref|, 1); 0 for empty arrays."""
    x, ref = np.asarray(x, np.float64), np.asarray(ref, np.float64)
    if ref.size == 0:
        return 0.0
    return float(np.max(np.abs(x - ref) / np.maximum(np.abs(ref), 1.0)))


def inter_tolerance(z, mu, log_pi_inter, rtol=RTOL) -> float:
    """Tolerance of entropy / posterior: float32 distances carry an absolute error of order
    eps32 · d, which moves the posterior by that much. Only classes within 30 nats of the best
    one matter; at the model's scales (d ≈ D) this is below ``rtol``."""
    if len(z) == 0:
        return rtol
    d = np.sum((z[:, None, :].astype(np.float64) - mu[None].astype(np.float64)) ** 2, -1)  # (N, C)
    logits = -0.5 * d + log_pi_inter[None]  # (N, C)
    relevant = logits >= logits.max(1, keepdims=True) - 30.0
    return max(rtol, float(np.finfo(np.float32).eps) * float(np.max(np.where(relevant, d, 0.0))))


def run_fused(g: G.GaussianMixture, z, logdet, class_index, device):
    """fused() into poisoned buffers on `device`; returns numpy arrays and the class."""
    n, c = z.shape[0], g.n_classes
    if device == "cpu":
        logp, ent, mean = np.full(n, POISON), np.full(n, POISON), np.full(c, POISON)
        routed = g.fused_into(z, logdet, class_index, logp, ent, mean)
        return G.GMMOutput(logp, ent, mean, routed)
    dev = torch.device("cuda")
    out = (torch.full((n,), float(POISON), device=dev), torch.full((n,), float(POISON), device=dev),
           torch.full((c,), float(POISON), device=dev), torch.full((1,), -5, dtype=torch.int32, device=dev))
    o = g.fused_cuda(torch.from_numpy(z).to(dev), torch.from_numpy(logdet).to(dev), class_index, out=out)
    torch.cuda.synchronize()
    return G.GMMOutput(o.logp.cpu().numpy(), o.entropy.cpu().numpy(), o.posterior_mean.cpu().numpy(),
                       int(o.class_index.item()))


def check_against_reference(params, z, logdet, out: G.GMMOutput, class_index, rtol=RTOL, inter_rtol=None):
    inter_rtol = rtol if inter_rtol is None else inter_rtol
    ent_ref, mean_ref = G.reference_inter(z, params["mu"], params["log_pi_inter"])
    if class_index >= 0:
        assert out.class_index == class_index
    elif len(z) == 0:
        assert out.class_index == 0
    else:  # the plurality of the posterior argmax (G.route); a position within rounding of a tie may
        # vote either way, which moves two classes' shares by 1/N each
        votes_ref = G.votes_of(G.reference_posterior(z, params["mu"], params["log_pi_inter"]))
        assert votes_ref[out.class_index] >= votes_ref.max() - 2.0 / len(z) - 1e-6
    logp_ref = G.reference_intra(z, logdet, params["mu_intra"], params["log_pi_intra"], out.class_index)
    assert out.logp.shape == (len(z),) and out.entropy.shape == (len(z),)
    assert out.posterior_mean.shape == (params["mu"].shape[0],)
    for arr in out[:3]:
        assert np.all(arr != POISON), "an output element was not written"
        assert np.all(np.isfinite(arr))
    assert relerr(out.logp, logp_ref) < rtol
    assert relerr(out.entropy, ent_ref) < inter_rtol
    assert relerr(out.posterior_mean, mean_ref) < inter_rtol


SHAPES = [  # (N, C, K, D)
    (1344, 15, 10, 112),  # the target level
    (256, 6, 10, 272),
    (97, 40, 1, 37),  # K=1, D not a multiple of the SIMD width, N not a multiple of the row block
    (1, 1, 1, 1),
    (1, 7, 3, 5),
    (33, 1, 10, 37),  # C=1
    (20, 17, 17, 16),
]


# ----------------------------------------------------------------------------- parity
@pytest.mark.parametrize("backend,device", BACKEND_DEVICES)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "N%d-C%d-K%d-D%d" % s)
def test_fused_matches_float64_reference(shape, backend, device):
    rng = np.random.default_rng()
    params, z, logdet = make_level(rng, *shape, tie_first=bool(rng.integers(2)))
    g = G.GaussianMixture(**params, backend=backend)
    assert g.backend == backend
    for c in (-1, int(rng.integers(shape[1]))):
        out = run_fused(g, z, logdet, c, device)
        check_against_reference(params, z, logdet, out, c)


@pytest.mark.parametrize("backend", BACKENDS)
def test_inter_intra_posterior_agree_with_reference(backend):
    rng = np.random.default_rng()
    params, z, logdet = make_level(rng, 300, 9, 4, 61)
    g = G.GaussianMixture(**params, backend=backend)
    ent, mean = g.inter(z)
    ent_ref, mean_ref = G.reference_inter(z, params["mu"], params["log_pi_inter"])
    assert relerr(ent, ent_ref) < RTOL and relerr(mean, mean_ref) < RTOL
    post = g.posterior(z)
    assert post.shape == (300, 9)
    assert relerr(post, G.reference_posterior(z, params["mu"], params["log_pi_inter"])) < RTOL
    c = int(rng.integers(9))
    ref_c = G.reference_intra(z, logdet, params["mu_intra"], params["log_pi_intra"], c)
    assert relerr(g.intra(z, logdet, c), ref_c) < RTOL
    all_c = g.intra_all(z, logdet)
    assert all_c.shape == (300, 9)
    assert relerr(all_c[:, c], ref_c) < RTOL
    for k in range(9):
        assert relerr(all_c[:, k], G.reference_intra(z, logdet, params["mu_intra"], params["log_pi_intra"], k)) < RTOL
    _, ent_all, mean_all = g.fused_all(z, logdet)
    assert relerr(ent_all, ent_ref) < RTOL and relerr(mean_all, mean_ref) < RTOL


@pytest.mark.parametrize("backend", BACKENDS)
def test_native_and_numpy_give_the_same_numbers(backend):
    rng = np.random.default_rng()
    params, z, logdet = make_level(rng, 500, 15, 10, 112)
    a = G.GaussianMixture(**params, backend=backend).fused(z, logdet)
    b = G.GaussianMixture(**params, backend="numpy").fused(z, logdet)
    assert a.class_index == b.class_index
    for x, y in zip(a[:3], b[:3]):
        assert relerr(x, y) < 2 * RTOL


# ----------------------------------------------------------------------------- edge cases
@pytest.mark.parametrize("backend,device", BACKEND_DEVICES)
def test_empty_input(backend, device):
    rng = np.random.default_rng()
    params, z, logdet = make_level(rng, 0, 4, 3, 37)
    g = G.GaussianMixture(**params, backend=backend)
    for c in (-1, 2):
        out = run_fused(g, z, logdet, c, device)
        assert out.logp.shape == (0,) and out.entropy.shape == (0,)
        np.testing.assert_array_equal(out.posterior_mean, np.zeros(4, np.float32))  # documented: no mass
        assert out.class_index == max(c, 0)
    ent, mean = g.inter(z)
    assert ent.shape == (0,) and np.all(mean == 0)


@pytest.mark.parametrize("backend,device", BACKEND_DEVICES)
def test_huge_distances_stay_finite_and_accurate(backend, device):
    """Distances of 1e4..1e6: exp(-d/2) underflows to 0 in float32 and float64; the stable
    log-sum-exp must still give finite values that match the float64 reference."""
    rng = np.random.default_rng()
    for noise in (10.0, 100.0):  # d ≈ noise² · D ≈ 1.1e4 and 1.1e6
        params, z, logdet = make_level(rng, 200, 6, 10, 112, spread=3.0, noise=noise)
        g = G.GaussianMixture(**params, backend=backend)
        out = run_fused(g, z, logdet, -1, device)
        for arr in out[:3]:
            assert np.all(np.isfinite(arr)) and np.all(arr != POISON)
        d = np.sum((z[:, None, :].astype(np.float64) - params["mu"][None]) ** 2, -1)  # (N, C)
        assert d.min() > 5e3
        with np.errstate(divide="ignore"):  # the naive formula really does break here
            assert np.isneginf(np.log(np.exp(-0.5 * d).sum(1))).any()
        ent_ref, mean_ref = G.reference_inter(z, params["mu"], params["log_pi_inter"])
        logp_ref = G.reference_intra(z, logdet, params["mu_intra"], params["log_pi_intra"], out.class_index)
        assert relerr(out.logp, logp_ref) < RTOL
        tol = inter_tolerance(z, params["mu"], params["log_pi_inter"])  # the problem's conditioning
        assert np.max(np.abs(out.entropy - ent_ref)) < tol
        assert np.max(np.abs(out.posterior_mean - mean_ref)) < tol
        assert np.all(out.entropy >= -1e-6) and np.all(out.entropy <= math.log(6) + 1e-5)


def test_numpy_inter_leaves_out_the_cancelling_norm():
    """z far from every center in one direction (an anomalous feature): |z|² ≫ |z|·|μ|. The numpy
    path (and the ONNX full graph) drop the ||z||² that cancels in the softmax: error 9e-5 on
    these inputs, 4e-3 with it in. (The native kernel sums (z − μ)² directly; its float32 rounding
    of the large sums, 6e-3 here, is bounded by ``inter_tolerance`` in the tests above.)"""
    rng = np.random.default_rng(0)
    params, z, logdet = make_level(rng, 300, 6, 4, 112, spread=1.0)
    z = (z + 40.0 * rng.standard_normal((1, 112))).astype(np.float32)  # (N, D), |z| ≈ 420
    out = G.GaussianMixture(**params, backend="numpy").fused(z, logdet)
    ent_ref, mean_ref = G.reference_inter(z, params["mu"], params["log_pi_inter"])
    assert np.max(np.abs(out.entropy - ent_ref)) < 5e-4
    assert np.max(np.abs(out.posterior_mean - mean_ref)) < 5e-4


@pytest.mark.parametrize("backend,device", BACKEND_DEVICES)
def test_nan_propagates(backend, device):
    """Documented policy: a NaN in z[i] makes logp[i], entropy[i] and the posterior mean NaN and
    row i votes for class 0 (np.argmax rule); a NaN in logdet[i] only touches logp[i]."""
    rng = np.random.default_rng()
    params, z, logdet = make_level(rng, 50, 5, 4, 37)
    g = G.GaussianMixture(**params, backend=backend)
    c = int(rng.integers(1, 5))
    ld = logdet.copy()
    ld[7] = np.nan
    out = run_fused(g, z, ld, c, device)
    assert np.isnan(out.logp[7]) and np.isfinite(np.delete(out.logp, 7)).all()
    assert np.isfinite(out.entropy).all() and np.isfinite(out.posterior_mean).all()

    zn = z.copy()
    zn[5, 3] = np.nan
    out = run_fused(g, zn, logdet, c, device)
    assert np.isnan(out.logp[5]) and np.isnan(out.entropy[5])
    assert np.all(np.isnan(out.posterior_mean))
    keep = np.arange(50) != 5
    logp_ref = G.reference_intra(z, logdet, params["mu_intra"], params["log_pi_intra"], c)
    ent_ref, _ = G.reference_inter(z, params["mu"], params["log_pi_inter"])
    assert relerr(out.logp[keep], logp_ref[keep]) < RTOL
    assert relerr(out.entropy[keep], ent_ref[keep]) < RTOL
    # the NaN row votes for class 0 (np.argmax: the first NaN), the others as before: the plurality
    # of the clean rows still routes (the old mean rule fell to class 0 on a single NaN)
    votes = G.votes_of(G.reference_posterior(zn, params["mu"], params["log_pi_inter"]))
    assert votes[0] >= 1 / 50
    assert run_fused(g, zn, logdet, -1, device).class_index == G.route([votes], [np.full(5, np.nan)])


@pytest.mark.parametrize("backend,device", BACKEND_DEVICES)
def test_routing_tie_goes_to_the_first_class(backend, device):
    """Two identical classes tie exactly in the posterior mean: the first one wins (np.argmax)."""
    rng = np.random.default_rng()
    params, z, logdet = make_level(rng, 40, 3, 4, 19)
    for key in ("mu", "mu_intra"):
        params[key][2] = params[key][1]
    params["log_pi_inter"][:] = np.float32(np.log(1 / 3))
    z = (params["mu"][1] + rng.standard_normal((40, 19)) * 0.1).astype(np.float32)  # all near 1 ≡ 2
    g = G.GaussianMixture(**params, backend=backend)
    out = run_fused(g, z, logdet, -1, device)
    assert out.posterior_mean[1] == out.posterior_mean[2] and out.class_index == 1


# ----------------------------------------------------------------------------- property test
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(n=st.integers(0, 40), c=st.integers(1, 20), k=st.integers(1, 12), d=st.integers(1, 70),
       spread=st.floats(0.1, 5.0), noise=st.floats(0.1, 5.0), seed=st.integers(0, 2**32 - 1),
       backend=st.sampled_from(["native", "numpy"] if G.has_native() else ["numpy"]))
def test_property_matches_reference_and_bounds(n, c, k, d, spread, noise, seed, backend):
    rng = np.random.default_rng(seed)
    params, z, logdet = make_level(rng, n, c, k, d, spread=spread, noise=noise)
    g = G.GaussianMixture(**params, backend=backend)
    out = g.fused(z, logdet)
    tol = inter_tolerance(z, params["mu"], params["log_pi_inter"], 2 * RTOL)
    check_against_reference(params, z, logdet, out, -1, rtol=2 * RTOL, inter_rtol=tol)
    assert np.all(out.entropy >= -1e-6) and np.all(out.entropy <= math.log(c) + 1e-5)
    if n:
        assert abs(float(out.posterior_mean.sum()) - 1.0) < 1e-5
    # the routed class's logp equals the given-class call
    again = g.fused(z, logdet, out.class_index)
    np.testing.assert_allclose(again.logp, out.logp, rtol=1e-6, atol=1e-6)


# ----------------------------------------------------------------------------- API contract
def test_extension_is_built():
    """`pip install -e .` builds hgad_edge._C; set HGAD_NO_NATIVE_OK=1 to run on a numpy-only install."""
    if os.environ.get("HGAD_NO_NATIVE_OK") == "1":
        pytest.skip("HGAD_NO_NATIVE_OK=1: numpy-only install accepted")
    assert G.has_native(), f"hgad_edge._C failed to import: {G._IMPORT_ERROR}"
    assert isinstance(G.has_cuda(), bool)


def test_auto_backend_falls_back_to_numpy(monkeypatch):
    rng = np.random.default_rng()
    params, z, logdet = make_level(rng, 10, 3, 2, 8)
    monkeypatch.setattr(G, "_C", None)
    g = G.GaussianMixture(**params)
    assert g.backend == "numpy" and not G.has_native() and not G.has_cuda()
    with pytest.raises(ImportError, match="pip install -e"):
        G.GaussianMixture(**params, backend="native")
    check_against_reference(params, z, logdet, g.fused(z, logdet), -1)


def test_bad_arguments_raise_value_errors():
    rng = np.random.default_rng()
    params, z, logdet = make_level(rng, 10, 3, 2, 8)
    with pytest.raises(ValueError, match="backend must be one of"):
        G.GaussianMixture(**params, backend="cuda")
    bad = dict(params, mu_intra=params["mu_intra"][:, :, :4])
    with pytest.raises(ValueError, match="mu_intra"):
        G.GaussianMixture(**bad)
    g = G.GaussianMixture(**params)
    with pytest.raises(ValueError, match="class_index"):
        g.fused(z, logdet, 3)
    with pytest.raises(ValueError, match="class_index"):
        g.intra(z, logdet, -1)
    with pytest.raises(ValueError, match="z must be"):
        g.inter(z[:, :5])
    with pytest.raises(ValueError, match="logdet"):
        g.fused(z, logdet[:4])


@pytest.mark.skipif(not G.has_native(), reason="hgad_edge._C not built")
def test_native_takes_float32_without_copies_and_rejects_bad_out_buffers():
    rng = np.random.default_rng()
    params, z, logdet = make_level(rng, 64, 4, 3, 20)
    g = G.GaussianMixture(**params, backend="native")
    assert g._z(z) is z  # float32 C-contiguous input reaches the kernel as is
    logp, ent, mean = np.full(64, POISON), np.full(64, POISON), np.full(4, POISON)
    g.fused_into(z, logdet, 1, logp, ent, mean)
    assert np.all(logp != POISON)  # written in place
    with pytest.raises(TypeError, match="C-contiguous float32"):
        g.fused_into(z, logdet, 1, np.zeros(128, np.float32)[::2], ent, mean)
    with pytest.raises(TypeError, match="C-contiguous float32"):
        g.fused_into(z, logdet, 1, np.zeros(64, np.float64), ent, mean)
    # other dtypes / layouts are converted by the wrapper, same numbers
    out64 = g.fused(z.astype(np.float64), logdet, 1)
    outf = g.fused(np.asfortranarray(z), logdet, 1)
    np.testing.assert_array_equal(out64.logp, outf.logp)
    np.testing.assert_array_equal(out64.logp, logp)


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA_DEVICE, reason=NO_GPU_REASON)
def test_cuda_float16_input_and_stream():
    rng = np.random.default_rng()
    params, z, logdet = make_level(rng, 700, 15, 10, 112)
    g = G.GaussianMixture(**params, backend="native")
    z16 = z.astype(np.float16)
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        zt = torch.from_numpy(z16).cuda()
        lt = torch.from_numpy(logdet).cuda()
    out = g.fused_cuda(zt, lt, -1, stream=stream)
    stream.synchronize()
    # reference on the float16-rounded input: the kernel widens to float32 exactly
    check_against_reference(params, z16.astype(np.float32), logdet,
                            G.GMMOutput(out.logp.cpu().numpy(), out.entropy.cpu().numpy(),
                                        out.posterior_mean.cpu().numpy(), int(out.class_index.item())), -1)
