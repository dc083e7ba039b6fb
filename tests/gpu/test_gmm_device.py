"""Multi-level routing kept on the device: ``inter_cuda`` on every level -> ``route_cuda`` ->
``intra_cuda`` on every level, against the float64 reference (``reference_inter`` /
``reference_intra``) and the CPU rule :func:`hgad_edge.gmm.route`.

The rule (both paths): inter-class posterior on every level; per level the vote shares (share of
positions whose posterior argmax is c) and the image-mean posterior; the class with the largest
level-averaged vote share, ties by the level-averaged posterior mean, then the first (a NaN counts
as the maximum like ``np.argmax``); then the intra-class log-likelihood of the routed class on
every level.

The CPU tests of :func:`route` and of the wrappers' argument checks run everywhere; the device
tests are marked ``gpu`` and skip with the reason unless ``hgad_edge._C`` was built with CUDA and
torch sees a GPU. Device buffers are torch CUDA tensors passed by ``data_ptr()``, outputs are
poisoned first.
"""
from __future__ import annotations

import numpy as np
import pytest

from hgad_edge import gmm as G
from tests.unit.test_gmm import make_level, relerr

try:
    import torch

    HAS_CUDA_DEVICE = G.has_cuda() and torch.cuda.is_available()
except ImportError:  # pragma: no cover - torch is a dependency
    torch = None
    HAS_CUDA_DEVICE = False

NO_GPU_REASON = ("device routing: needs hgad_edge._C built with CUDA (has_cuda()=%s) and a GPU visible to torch"
                 % G.has_cuda())
NEEDS_GPU = [pytest.mark.gpu, pytest.mark.skipif(not HAS_CUDA_DEVICE, reason=NO_GPU_REASON)]
POISON = np.float32(-7.77e37)  # finite, so an unwritten element fails every comparison
RTOL = 1e-5  # float32 kernel vs float64 reference (as tests/unit/test_gmm.py)


def gpu(f):
    for mark in reversed(NEEDS_GPU):
        f = mark(f)
    return f


# ----------------------------------------------------------------------------- helpers
def reference_sequence(levels, zs, logdets, class_index=-1):
    """The CPU/float64 rule: per-level reference_inter and votes, route(), reference_intra."""
    inter = [G.reference_inter(z, p["mu"], p["log_pi_inter"]) for p, z in zip(levels, zs)]
    means = np.stack([m for _, m in inter])  # (L, C) float64
    votes = np.stack([G.votes_of(G.reference_posterior(z, p["mu"], p["log_pi_inter"]))
                      for p, z in zip(levels, zs)])  # (L, C)
    c = G.route(votes, means) if class_index < 0 else class_index
    logp = [G.reference_intra(z, ld, p["mu_intra"], p["log_pi_intra"], c) for p, z, ld in zip(levels, zs, logdets)]
    return [e for e, _ in inter], means, votes, c, logp


def run_device(gs, zs, logdets, class_index=-1, half=False, stream=None):
    """The device sequence on poisoned torch buffers; one synchronisation at the very end.

    Returns (entropy per level, means (L, C), votes (L, C), class, logp per level) as numpy / int."""
    dev = torch.device("cuda")
    n_levels, n_classes = len(gs), gs[0].n_classes
    zt = [torch.from_numpy(z.astype(np.float16) if half else z).to(dev).contiguous() for z in zs]
    lt = [torch.from_numpy(ld).to(dev) for ld in logdets]
    ent = [torch.full((len(z),), float(POISON), device=dev) for z in zs]
    logp = [torch.full((len(z),), float(POISON), device=dev) for z in zs]
    means = torch.full((n_levels, n_classes), float(POISON), device=dev)  # (L, C)
    votes = torch.full((n_levels, n_classes), float(POISON), device=dev)  # (L, C)
    cls = torch.full((1,), -5, dtype=torch.int32, device=dev)
    s = torch.cuda.current_stream() if stream is None else stream
    s.wait_stream(torch.cuda.current_stream())  # the inputs were written on the current stream
    handle = stream if stream is not None else 0  # a stream object, or the legacy default stream
    for g, z, e, row, vrow in zip(gs, zt, ent, means, votes):
        g.inter_cuda(z.data_ptr(), z.shape[0], e.data_ptr(), row.data_ptr(), vrow.data_ptr(), stream=handle,
                     z_half=half)
    G.route_cuda(votes.data_ptr(), means.data_ptr(), n_levels, n_classes, class_index, cls.data_ptr(), stream=handle)
    for g, z, ld, lp in zip(gs, zt, lt, logp):
        g.intra_cuda(z.data_ptr(), ld.data_ptr(), z.shape[0], cls.data_ptr(), lp.data_ptr(), stream=handle,
                     z_half=half)
    s.synchronize()
    return ([e.cpu().numpy() for e in ent], means.cpu().numpy(), votes.cpu().numpy(), int(cls.item()),
            [lp.cpu().numpy() for lp in logp])


def check_sequence(levels, zs, logdets, out, class_index=-1):
    """Device outputs vs the float64 reference and route(); near-ties of the float64 rule may go
    either way, but the device class must equal route() of the device's own float32 votes and
    means; a position within rounding of a tie between two classes may vote for either (at most
    one such position per level is allowed)."""
    ent, means, votes, c, logp = out
    ent_ref, means_ref, votes_ref, c_ref, _ = reference_sequence(levels, zs, logdets, class_index)
    assert means.shape == means_ref.shape
    for l, (e, er) in enumerate(zip(ent, ent_ref)):
        assert e.shape == er.shape and np.all(e != POISON), f"level {l}: entropy not written"
        assert relerr(e, er) < RTOL, f"level {l}: entropy"
    assert np.all(means != POISON)
    assert relerr(means, means_ref) < RTOL
    assert np.all(votes != POISON)
    for l, z in enumerate(zs):
        assert np.abs(votes[l] - votes_ref[l]).sum() * max(len(z), 1) <= 2 + 1e-3, f"level {l}: votes"
    if class_index >= 0:
        assert c == class_index
    else:
        assert c == G.route(votes, means)  # the same rule on the same float32 inputs, bit for bit
    for l, (p, z, ld, lp) in enumerate(zip(levels, zs, logdets, logp)):
        ref = G.reference_intra(z, ld, p["mu_intra"], p["log_pi_intra"], c)
        assert lp.shape == ref.shape and np.all(lp != POISON), f"level {l}: logp not written"
        assert np.all(np.isfinite(lp)) and relerr(lp, ref) < RTOL, f"level {l}: logp"
    return c_ref


# ----------------------------------------------------------------------------- route (CPU)
def test_route_is_the_plurality_of_level_averaged_votes_then_the_mean():
    rng = np.random.default_rng()
    for _ in range(20):
        c = int(rng.integers(1, 12))
        levels, zs = [], []
        for n, d in ((int(rng.integers(1, 300)), 37), (int(rng.integers(0, 80)), 16), (5, 61)):
            params, z, _ = make_level(rng, n, c, 3, d, spread=float(rng.uniform(0.3, 3.0)))
            levels.append(params)
            zs.append(z)
        means = [G.reference_inter(z, p["mu"], p["log_pi_inter"])[1] for p, z in zip(levels, zs)]  # L x (C,)
        votes = [G.votes_of(G.reference_posterior(z, p["mu"], p["log_pi_inter"])) for p, z in zip(levels, zs)]
        share, avg = np.mean(np.stack(votes), axis=0), np.mean(np.stack(means), axis=0)
        tied = [k for k in range(c) if share[k] == share.max()]
        want = max(tied, key=lambda k: (avg[k], -k))
        assert G.route(votes, means) == want  # lists of (C,) arrays
        assert G.route(np.stack(votes), np.stack(means)) == want  # (L, C) arrays
        assert G.route(np.stack(votes).tolist(), np.stack(means).astype(np.float32).tolist()) in range(c)


def test_route_counts_votes_not_posterior_mass():
    # the posterior mass says class 1 (confident positions), most positions say class 0
    votes = [[0.7, 0.3, 0.0], [0.6, 0.4, 0.0]]
    means = [[0.45, 0.55, 0.0], [0.4, 0.6, 0.0]]
    assert G.route(votes, means) == 0
    assert G.route(votes[1:], means[1:]) == 0 and G.route([[0.3, 0.7, 0.0]], means[:1]) == 1
    # vote shares averaged over levels: level 0 alone says class 0, the average class 1
    votes = [[0.6, 0.4, 0.0], [0.0, 0.5, 0.5], [0.0, 0.5, 0.5]]
    assert G.route(votes[:1], np.zeros((1, 3))) == 0 and G.route(votes, np.zeros((3, 3))) == 1
    # ties of the averaged shares go to the posterior mean averaged over the levels
    votes = [[0.5, 0.5, 0.0], [0.5, 0.5, 0.0]]
    assert G.route(votes, [[0.5, 0.4, 0.1], [0.1, 0.8, 0.1]]) == 1


def test_route_ties_go_to_the_mean_then_class_0_and_nan_wins():
    assert G.route([[0.5, 0.5]], [[0.5, 0.5]]) == 0
    assert G.route([[0.5, 0.5]], [[0.4, 0.6]]) == 1  # tied votes: the larger posterior mean
    assert G.route([[0.5, 0.4, 0.1]], [[0.1, 0.8, 0.1]]) == 0  # not tied: the mean does not count
    assert G.route(np.full((3, 4), 0.25, np.float32), np.full((3, 4), 0.25, np.float32)) == 0  # all tie
    assert G.route([[0.2, 0.4, 0.4], [0.2, 0.4, 0.4]], [[0.2, 0.4, 0.4]] * 2) == 1  # the first of the ties
    assert G.route([[0.1, 0.2, 0.7], [0.1, np.nan, 0.7]], np.zeros((2, 3))) == 1  # a NaN vote wins
    assert G.route([[0.5, 0.5, 0.0]], [[0.2, np.nan, 0.7]]) == 1  # a NaN mean wins among the tied
    assert G.route([[0.5, 0.5, 0.0]], [[0.2, 0.3, np.nan]]) == 1  # ... but only among the tied


def test_route_rejects_what_is_not_one_row_per_level():
    for bad in (np.zeros(3), np.zeros((0, 3)), np.zeros((2, 0)), np.zeros((1, 2, 3))):
        with pytest.raises(ValueError, match="level_votes"):
            G.route(bad, bad)
    with pytest.raises(ValueError, match="level_votes"):
        G.route(np.zeros((2, 3)), np.zeros((1, 3)))


@pytest.mark.parametrize("backend", [pytest.param("native", marks=pytest.mark.skipif(
    not G.has_native(), reason="hgad_edge._C not built")), "numpy"])
def test_one_level_fused_routing_is_route_with_one_level(backend):
    rng = np.random.default_rng()
    params, z, logdet = make_level(rng, 200, 9, 4, 33)
    g = G.GaussianMixture(**params, backend=backend)
    out = g.fused(z, logdet)
    assert out.class_index == G.route([g.inter_votes(z)[2]], [out.posterior_mean])


# ----------------------------------------------------------------------------- argument checks (CPU)
def test_cuda_entry_points_without_cuda_raise_the_rebuild_hint(monkeypatch):
    rng = np.random.default_rng()
    params, _, _ = make_level(rng, 4, 3, 2, 8)
    g = G.GaussianMixture(**params, backend="numpy")
    monkeypatch.setattr(G, "has_cuda", lambda: False)
    for call in (lambda: G.route_cuda(1, 1, 1, 3, -1, 1),
                 lambda: g.inter_cuda(1, 4, 1, 1, 1),
                 lambda: g.intra_cuda(1, 1, 4, 1, 1)):
        with pytest.raises(RuntimeError, match="FORCE_CUDA=1"):
            call()


@pytest.mark.skipif(not G.has_cuda(), reason="the wrappers check arguments only once has_cuda() is True")
def test_cuda_wrappers_reject_bad_arguments_before_touching_the_device():
    """Every check below raises on the host before any CUDA call, so no GPU is needed."""
    rng = np.random.default_rng()
    params, _, _ = make_level(rng, 4, 3, 2, 8)
    g = G.GaussianMixture(**params, backend="native")
    with pytest.raises(ValueError, match="n_levels"):
        G.route_cuda(1, 1, 0, 3, -1, 1)
    with pytest.raises(ValueError, match="n_classes"):
        G.route_cuda(1, 1, 2, 0, -1, 1)
    for c in (-2, 3):
        with pytest.raises(ValueError, match="class_index"):
            G.route_cuda(1, 1, 2, 3, c, 1)
    with pytest.raises(ValueError, match="class_ptr"):
        G.route_cuda(1, 1, 2, 3, -1, 0)
    with pytest.raises(ValueError, match="means_ptr"):
        G.route_cuda(1, 0, 2, 3, -1, 1)
    with pytest.raises(ValueError, match="votes_ptr"):
        G.route_cuda(0, 1, 2, 3, -1, 1)
    with pytest.raises(ValueError, match="n must be"):
        g.inter_cuda(1, -1, 1, 1, 1)
    with pytest.raises(ValueError, match="mean_ptr"):
        g.inter_cuda(1, 4, 1, 0, 1)
    with pytest.raises(ValueError, match="votes_ptr"):
        g.inter_cuda(1, 4, 1, 1, 0)
    with pytest.raises(ValueError, match="n must be"):
        g.intra_cuda(1, 1, -1, 1, 1)
    with pytest.raises(ValueError, match="class_ptr"):
        g.intra_cuda(1, 1, 4, 0, 1)
    if torch is not None:
        with pytest.raises(TypeError, match="data_ptr"):  # a tensor, not its pointer
            g.intra_cuda(1, 1, 4, torch.zeros(1, dtype=torch.int32), 1)
    with pytest.raises(TypeError, match="int"):
        g.inter_cuda(1.5, 4, 1, 1, 1)
    # the bindings check too (they are called by other code than this wrapper)
    native = g._native
    with pytest.raises(ValueError, match="n must be"):
        native.inter_cuda(1, False, -1, 1, 1, 1, 0)
    with pytest.raises(ValueError, match="class_ptr"):
        native.intra_cuda(1, False, 1, 4, 0, 1, 0)
    with pytest.raises(ValueError, match="n_levels"):
        G._C.route_cuda(1, 1, 0, 3, -1, 1, 0)
    with pytest.raises(ValueError, match="class_index"):
        G._C.route_cuda(1, 1, 1, 3, 3, 1, 0)


# ----------------------------------------------------------------------------- device sequence
def three_levels(rng, n_classes=15, ns=(1344, 336, 0), dims=(112, 160, 48), **kw):
    """L = 3 levels of one model: the same classes, different N (one may be 0) and D."""
    out = [make_level(rng, n, n_classes, 10, d, **kw) for n, d in zip(ns, dims)]
    return [p for p, _, _ in out], [z for _, z, _ in out], [ld for _, _, ld in out]


@gpu
@pytest.mark.parametrize("empty_level", [0, 1, 2, None])
def test_device_sequence_matches_reference_and_route(empty_level):
    rng = np.random.default_rng()
    ns = [int(rng.integers(1, 1500)), int(rng.integers(1, 400)), int(rng.integers(1, 50))]
    if empty_level is not None:
        ns[empty_level] = 0
    levels, zs, lds = three_levels(rng, ns=ns)
    gs = [G.GaussianMixture(**p, backend="native") for p in levels]
    out = run_device(gs, zs, lds, -1)
    check_sequence(levels, zs, lds, out, -1)
    if empty_level is not None:
        np.testing.assert_array_equal(out[1][empty_level], np.zeros(15, np.float32))  # no position, no mass
    # the same numbers as the CPU path with route() (the native CPU kernel, float32)
    cpu = [g.inter_votes(z) for g, z in zip(gs, zs)]
    assert relerr(out[1], np.stack([m for _, m, _ in cpu])) < 2 * RTOL
    for l, (z, (_, _, v)) in enumerate(zip(zs, cpu)):
        assert np.abs(out[2][l] - v).sum() * max(len(z), 1) <= 2 + 1e-3, f"level {l}: votes vs the CPU kernel"
    # a given class: route_cuda writes it as is
    c = int(rng.integers(15))
    check_sequence(levels, zs, lds, run_device(gs, zs, lds, c), c)


@gpu
def test_device_sequence_float16_on_a_side_stream():
    rng = np.random.default_rng()
    levels, zs, lds = three_levels(rng, ns=(700, 175, 44))
    gs = [G.GaussianMixture(**p, backend="native") for p in levels]
    stream = torch.cuda.Stream()
    out = run_device(gs, zs, lds, -1, half=True, stream=stream)
    # reference on the float16-rounded input: the kernel widens to float32 exactly
    check_sequence(levels, [z.astype(np.float16).astype(np.float32) for z in zs], lds, out, -1)


@gpu
def test_device_routing_tie_goes_to_the_first_class():
    """Classes 1 and 2 identical on every level, all rows identical (so the atomically summed
    posterior means are exactly equal whatever the order, and every position votes for the first
    of the two equal maxima): the first one, 1, wins."""
    rng = np.random.default_rng()
    levels, zs, lds = [], [], []
    for n, d in ((48, 19), (5, 23), (16, 7)):  # 3 full blocks, a partial one, one full one
        params, _, ld = make_level(rng, n, 3, 4, d)
        for key in ("mu", "mu_intra"):
            params[key][2] = params[key][1]
        params["log_pi_inter"][:] = np.float32(np.log(1 / 3))
        params["log_pi_intra"][2] = params["log_pi_intra"][1]
        row = params["mu"][1] + rng.standard_normal(d).astype(np.float32) * 0.1
        levels.append(params)
        zs.append(np.tile(row, (n, 1)).astype(np.float32))
        lds.append(ld)
    gs = [G.GaussianMixture(**p, backend="native") for p in levels]
    out = run_device(gs, zs, lds, -1)
    means, votes = out[1], out[2]
    np.testing.assert_array_equal(means[:, 1], means[:, 2])
    np.testing.assert_array_equal(votes, np.tile(np.float32([0, 1, 0]), (3, 1)))
    assert out[3] == 1 == G.route(votes, means)
    check_sequence(levels, zs, lds, out, -1)


@gpu
def test_device_routing_nan_follows_np_argmax():
    """A NaN in one row of one level's z makes that level's whole posterior mean NaN, and that
    row votes for class 0 (np.argmax: the first NaN); the other rows still vote for class 2, so
    the class stays 2 (the old mean rule fell to class 0); logp is then NaN in that row only."""
    rng = np.random.default_rng()
    out = [make_level(rng, n, 5, 4, d, noise=0.3, z_class=2) for n, d in ((300, 37), (80, 16), (20, 61))]
    levels, zs, lds = [p for p, _, _ in out], [z for _, z, _ in out], [ld for _, _, ld in out]
    gs = [G.GaussianMixture(**p, backend="native") for p in levels]
    assert check_sequence(levels, zs, lds, run_device(gs, zs, lds, -1), -1) == 2
    zn = [z.copy() for z in zs]
    zn[1][7, 3] = np.nan
    ent, means, votes, c, logp = run_device(gs, zn, lds, -1)
    assert np.all(np.isnan(means[1])) and np.all(np.isfinite(means[[0, 2]]))
    assert votes[1][0] >= np.float32(1 / 80) and np.all(np.isfinite(votes))
    assert c == 2 == G.route(votes, means)
    assert np.isnan(ent[1][7]) and np.isnan(logp[1][7])
    keep = np.arange(80) != 7
    assert np.all(np.isfinite(logp[1][keep])) and np.all(np.isfinite(logp[0])) and np.all(np.isfinite(logp[2]))
    for l, (p, z, ld) in enumerate(zip(levels, zs, lds)):
        ref = G.reference_intra(z, ld, p["mu_intra"], p["log_pi_intra"], 2)
        mask = keep if l == 1 else slice(None)
        assert relerr(logp[l][mask], ref[mask]) < RTOL


@gpu
def test_route_cuda_equals_route_bit_for_bit():
    """Random (L, C) votes and means on a dyadic grid (frequent exact ties, sums exact in any
    order) and some NaNs: the device rule equals route() every time; a given class is written as
    is and votes and means are then not read."""
    rng = np.random.default_rng()
    dev = torch.device("cuda")
    cls = torch.full((1,), -5, dtype=torch.int32, device=dev)
    for i in range(200):
        n_levels, n_classes = int(rng.integers(1, 13)), int(rng.integers(1, 21))
        votes = (rng.integers(0, 3, size=(n_levels, n_classes)) / 4).astype(np.float32)  # (L, C)
        means = (rng.integers(0, 9, size=(n_levels, n_classes)) / 8).astype(np.float32)  # (L, C)
        if i % 5 == 0:
            means[rng.integers(n_levels), rng.integers(n_classes)] = np.nan
        if i % 7 == 0:
            votes[rng.integers(n_levels), rng.integers(n_classes)] = np.nan
        vt, mt = torch.from_numpy(votes).to(dev), torch.from_numpy(means).to(dev)
        G.route_cuda(vt.data_ptr(), mt.data_ptr(), n_levels, n_classes, -1, cls.data_ptr())
        torch.cuda.synchronize()
        assert int(cls.item()) == G.route(votes, means), (votes, means)
    for c in (0, 6):
        G.route_cuda(0, 0, 3, 7, c, cls.data_ptr())  # votes_ptr, means_ptr 0: not read
        torch.cuda.synchronize()
        assert int(cls.item()) == c
    crafted = {(((0.5, 0.5),), ((0.4, 0.6),)): 1, (((0.5, 0.5),), ((0.5, 0.5),)): 0,
               (((0.6, 0.4, 0.0), (0.0, 0.5, 0.5)), ((0.1, 0.9, 0.0), (0.0, 0.1, 0.9))): 1,
               (((0.5, 0.5, 0.0), (0.5, 0.5, 0.0)), ((0.5, 0.4, 0.1), (0.1, 0.8, 0.1))): 1,
               (((0.5, 0.5, 0.0),), ((0.2, 0.3, np.nan),)): 1, (((0.5, 0.5, 0.0),), ((0.2, np.nan, 0.7),)): 1,
               (((0.1, np.nan, 0.9),), ((0.9, 0.0, 0.1),)): 1}
    for (vrows, mrows), want in crafted.items():
        vt = torch.tensor(vrows, dtype=torch.float32, device=dev)
        mt = torch.tensor(mrows, dtype=torch.float32, device=dev)
        G.route_cuda(vt.data_ptr(), mt.data_ptr(), vt.shape[0], vt.shape[1], -1, cls.data_ptr())
        torch.cuda.synchronize()
        assert int(cls.item()) == want == G.route(np.array(vrows, np.float32), np.array(mrows, np.float32))


@gpu
def test_intra_cuda_out_of_range_device_class_gives_nan():
    """Documented: a class outside 0..C-1 read from device memory cannot raise; every logp is NaN
    and nothing is read out of bounds (the stream stays healthy for the next call)."""
    rng = np.random.default_rng()
    params, z, logdet = make_level(rng, 100, 4, 3, 29)
    g = G.GaussianMixture(**params, backend="native")
    dev = torch.device("cuda")
    zt, lt = torch.from_numpy(z).to(dev), torch.from_numpy(logdet).to(dev)
    for bad in (4, -1, 2**31 - 1, -(2**31)):
        cls = torch.tensor([bad], dtype=torch.int32, device=dev)
        logp = torch.full((100,), float(POISON), device=dev)
        g.intra_cuda(zt.data_ptr(), lt.data_ptr(), 100, cls.data_ptr(), logp.data_ptr())
        torch.cuda.synchronize()
        assert torch.isnan(logp).all(), bad
    cls = torch.tensor([3], dtype=torch.int32, device=dev)
    logp = torch.full((100,), float(POISON), device=dev)
    g.intra_cuda(zt.data_ptr(), lt.data_ptr(), 100, cls.data_ptr(), logp.data_ptr())
    torch.cuda.synchronize()
    ref = G.reference_intra(z, logdet, params["mu_intra"], params["log_pi_intra"], 3)
    assert relerr(logp.cpu().numpy(), ref) < RTOL
    # n = 0 launches nothing and writes nothing
    g.intra_cuda(0, 0, 0, cls.data_ptr(), 0)
    torch.cuda.synchronize()
