"""Inference-time hierarchical Gaussian mixture of one feature level (docs/design.md §1 ``gmm``).

Per level: ``N`` positions, ``D`` dims, ``C`` classes, ``K`` intra-class centers per class.

* inter: ``d_c = ||z - mu_c||²``, ``logits = -½ d + log_pi_inter``, posterior = softmax over
  ``c`` (N, C), its entropy (N), its image mean (C) and the vote shares (C): per class the share
  of positions whose posterior argmax (``np.argmax``: first maximum, a NaN wins) it is.
* intra (class ``c``): ``logp = [-½ log(2π)·D + logsumexp_k(-½ ||z - mu_intra[c,k]||² +
  log_pi_intra[c,k]) + logdet] / D`` (N).
* routing: the class is given (``c >= 0``) or auto (``c = -1``: :func:`route` of this call's
  votes and posterior mean, one level). Across the L levels of a model the rule is
  :func:`route`: the class with the most level-averaged votes, ties by the level-averaged
  posterior image mean (a plurality of positions, so anomalous positions — which can be
  confidently "another class" — cannot drag the class away unless they outnumber the normal
  ones; README "Routing under anomaly"), and :func:`route_cuda` on the device, between
  :meth:`GaussianMixture.inter_cuda` and :meth:`GaussianMixture.intra_cuda` on every level.

Backends: the fused native kernel ``hgad_edge._C`` (C++/OpenMP on CPU, CUDA on GPU; see
README "Native kernel" and docs/design.md §1) and a numpy fallback (BLAS expansion). ``reference_inter`` /
``reference_intra`` are the float64 oracle used by the tests.

NaN policy: NaN propagates. A NaN in row ``i`` of ``z`` (or in ``logdet[i]``) makes
``logp[i]`` (and, for ``z``, ``entropy[i]`` and the whole ``posterior_mean``) NaN; other rows
are unaffected. Nothing raises on NaN; a NaN posterior row votes for its first NaN class.
``N = 0`` gives empty ``logp``/``entropy``, a posterior mean and votes of zeros (no position, no
mass); auto-routing then picks class 0.
"""
from __future__ import annotations

import logging
import math
import operator
from typing import NamedTuple, Optional, Tuple

import numpy as np

logger = logging.getLogger(__name__)

try:  # the compiled extension is optional: numpy is the fallback
    from hgad_edge import _C  # type: ignore[attr-defined]
except ImportError as exc:  # pragma: no cover - depends on the build
    _C = None
    _IMPORT_ERROR: Optional[str] = str(exc)
else:
    _IMPORT_ERROR = None

BACKENDS = ("auto", "native", "numpy")
LOG_2PI = math.log(2.0 * math.pi)

__all__ = ["GMMOutput", "GaussianMixture", "reference_posterior", "reference_inter", "reference_intra",
           "route", "route_cuda", "votes_of", "has_native", "has_cuda", "BACKENDS"]
_NO_CUDA = ("hgad_edge._C was built without CUDA (has_cuda() is False); "
            "rebuild with FORCE_CUDA=1 pip install -e . on a machine with nvcc")


class GMMOutput(NamedTuple):
    """Result of :meth:`GaussianMixture.fused` for one level."""

    logp: np.ndarray  # (N,) intra-class log-likelihood / D of the routed class
    entropy: np.ndarray  # (N,) entropy of the inter-class posterior
    posterior_mean: np.ndarray  # (C,) image mean of the inter-class posterior
    class_index: int  # the class logp was computed for


def has_native() -> bool:
    """True when the compiled ``hgad_edge._C`` extension could be imported."""
    return _C is not None


def has_cuda() -> bool:
    """True when ``hgad_edge._C`` was compiled with CUDA (says nothing about a GPU being present)."""
    return _C is not None and bool(_C.has_cuda())


# ----------------------------------------------------------------------------- reference
def _logsumexp(x: np.ndarray, axis: int) -> np.ndarray:
    """Stable log-sum-exp; an all ``-inf`` slice gives ``-inf``, NaN propagates."""
    m = np.max(x, axis=axis, keepdims=True)
    m_safe = np.where(np.isfinite(m), m, 0.0)
    with np.errstate(divide="ignore"):
        out = np.log(np.sum(np.exp(x - m_safe), axis=axis, keepdims=True)) + m_safe
    return np.squeeze(out, axis=axis)


def reference_posterior(z, mu, log_pi_inter, dtype=np.float64) -> np.ndarray:
    """Inter-class posterior (N, C), materialising the differences (the oracle)."""
    z = np.asarray(z, dtype=dtype)  # (N, D)
    mu = np.asarray(mu, dtype=dtype)  # (C, D)
    d = np.sum((z[:, None, :] - mu[None, :, :]) ** 2, axis=-1)  # (N, C)
    logits = -0.5 * d + np.asarray(log_pi_inter, dtype=dtype)[None, :]  # (N, C)
    return np.exp(logits - _logsumexp(logits, axis=1)[:, None])  # (N, C)


def reference_inter(z, mu, log_pi_inter, dtype=np.float64) -> Tuple[np.ndarray, np.ndarray]:
    """(entropy (N,), posterior image mean (C,)) of the inter-class posterior, in ``dtype``."""
    z = np.asarray(z, dtype=dtype)  # (N, D)
    mu = np.asarray(mu, dtype=dtype)  # (C, D)
    d = np.sum((z[:, None, :] - mu[None, :, :]) ** 2, axis=-1)  # (N, C)
    logits = -0.5 * d + np.asarray(log_pi_inter, dtype=dtype)[None, :]  # (N, C)
    logq = logits - _logsumexp(logits, axis=1)[:, None]  # (N, C) log posterior
    p = np.exp(logq)  # (N, C)
    entropy = -np.sum(np.where(p > 0, p * logq, 0.0), axis=1)  # (N,)
    mean = p.sum(axis=0) / max(z.shape[0], 1)  # (C,)
    return entropy, mean


def reference_intra(z, logdet, mu_intra, log_pi_intra, c: int, dtype=np.float64) -> np.ndarray:
    """Intra-class log-likelihood / D (N,) of class ``c``, materialising the differences."""
    z = np.asarray(z, dtype=dtype)  # (N, D)
    mu_c = np.asarray(mu_intra, dtype=dtype)[c]  # (K, D)
    d = np.sum((z[:, None, :] - mu_c[None, :, :]) ** 2, axis=-1)  # (N, K)
    lse = _logsumexp(-0.5 * d + np.asarray(log_pi_intra, dtype=dtype)[c][None, :], axis=1)  # (N,)
    dim = z.shape[1]
    return (-0.5 * LOG_2PI * dim + lse + np.asarray(logdet, dtype=dtype)) / dim  # (N,)


# ----------------------------------------------------------------------------- CUDA arrays
def _cuda_interface(a, name: str, dtypes: dict, shapes: tuple = ()) -> dict:
    """``__cuda_array_interface__`` of ``a``, checked: dtype in ``dtypes``, C-contiguous, shape."""
    cai = getattr(a, "__cuda_array_interface__", None)
    if cai is None:
        raise TypeError(f"{name} must be a CUDA array with __cuda_array_interface__ (torch, cupy, pycuda), "
                        f"got {type(a).__name__}")
    info = dict(cai)
    typestr = info["typestr"].replace("|", "<").replace("=", "<")
    if typestr not in dtypes:
        raise TypeError(f"{name} must have dtype {sorted(dtypes)}, got {info['typestr']}")
    info["half"] = dtypes[typestr]
    shape = tuple(info["shape"])
    if shapes and shape not in shapes:
        raise ValueError(f"{name} must have shape {shapes[0]}, got {shape}")
    strides = info.get("strides")
    if strides is not None:
        itemsize = int(typestr[2:])
        expect, acc = [], itemsize
        for dim in reversed(shape):
            expect.append(acc)
            acc *= dim
        if tuple(strides) != tuple(reversed(expect)) and math.prod(shape) > 1:
            raise ValueError(f"{name} must be C-contiguous (strides {tuple(strides)})")
    return info


def _stream_handle(stream, z_info: dict) -> int:
    if stream is None:
        return int(z_info.get("stream") or 0)
    if isinstance(stream, int):
        return stream
    for attr in ("cuda_stream", "handle", "ptr"):
        if hasattr(stream, attr):
            return int(getattr(stream, attr))
    raise TypeError(f"stream must be an int cudaStream_t or have .cuda_stream/.handle, got {type(stream).__name__}")


def _device_ptr(ptr, name: str, required: bool = True) -> int:
    """A raw device pointer given as an int (``tensor.data_ptr()``, ``int(DeviceAllocation)``)."""
    if hasattr(ptr, "__cuda_array_interface__") or hasattr(ptr, "data_ptr") or isinstance(ptr, bool):
        raise TypeError(f"{name} must be a device pointer as an int (e.g. tensor.data_ptr(), int(allocation)), "
                        f"got {type(ptr).__name__}")
    try:
        value = operator.index(ptr)
    except TypeError:
        raise TypeError(f"{name} must be a device pointer as an int, got {type(ptr).__name__}") from None
    if not 0 <= value < 2 ** 64:
        raise ValueError(f"{name} must be a device pointer in [0, 2**64), got {value}")
    if required and value == 0:
        raise ValueError(f"{name} must be a device pointer, got 0 (null)")
    return value


def _count(n, name: str, low: int) -> int:
    if isinstance(n, bool):
        raise TypeError(f"{name} must be an int, got bool")
    try:
        value = operator.index(n)
    except TypeError:
        raise TypeError(f"{name} must be an int, got {type(n).__name__}") from None
    if value < low:
        raise ValueError(f"{name} must be >= {low}, got {value}")
    return value


def _torch_outputs(z, n: int, n_classes: int) -> tuple:
    try:
        import torch
    except ImportError as exc:  # pragma: no cover - torch is a dependency of the package
        raise ImportError("fused_cuda allocates its outputs with torch: pip install torch, or pass out=") from exc
    device = z.device if isinstance(z, torch.Tensor) else torch.device("cuda", torch.cuda.current_device())
    f32 = dict(dtype=torch.float32, device=device)
    return (torch.empty(n, **f32), torch.empty(n, **f32), torch.empty(n_classes, **f32),
            torch.empty(1, dtype=torch.int32, device=device))


# ----------------------------------------------------------------------------- routing
def votes_of(posterior) -> np.ndarray:
    """Vote shares (C,) float32 of a posterior (N, C): per class the count of rows whose
    ``np.argmax`` (first maximum, a NaN wins) it is, divided by N in float32 (zeros when N = 0)."""
    p = np.asarray(posterior)
    n, c = p.shape
    counts = np.bincount(np.argmax(p, axis=1), minlength=c) if n else np.zeros(c, np.int64)
    return counts.astype(np.float32) / np.float32(max(n, 1))  # (C,)


def route(level_votes, level_means) -> int:
    """The class of an image from its per-level vote shares and posterior image means: THE
    routing rule (docs/design.md §1 gmm; README "Routing under anomaly").

    The class with the largest level-averaged vote share ``mean_l level_votes[l, c]``: each
    position votes for the argmax of its posterior, so every position weighs the same however
    sure it is — a defect, which can be confidently "another class" at its own positions, moves
    the class only by covering more positions than the normal surface (the image-mean posterior
    let a confident defect outweigh a larger, less confidently classified surface). Among classes
    tied on it, the largest level-averaged posterior mean ``mean_l level_means[l, c]``, then the
    first. A NaN counts as the maximum where it is compared (``np.argmax``). One level is
    ``L = 1``. :func:`route_cuda` applies the same rule on the device (bit for bit on float32
    inputs).

    Args:
        level_votes: (L, C) array-like, or a list of L (C,) arrays (:func:`votes_of` /
            ``GaussianMixture.inter_votes(z)[2]`` of every level), L >= 1, C >= 1.
        level_means: (L, C), the posterior image means of the same levels (``inter(z)[1]``).

    Returns:
        The class index in ``0..C-1``.

    Raises:
        ValueError: when the two are not both (L, C) with L, C >= 1.
    """
    votes, means = np.asarray(level_votes), np.asarray(level_means)
    if votes.ndim != 2 or votes.shape[0] < 1 or votes.shape[1] < 1 or means.shape != votes.shape:
        raise ValueError(f"level_votes and level_means must both be (L, C) with L, C >= 1 (one (C,) row per "
                         f"level), got shapes {votes.shape} and {means.shape}")
    share = np.mean(votes, axis=0)  # (C,)
    best = int(np.argmax(share))
    if np.isnan(share[best]):
        return best
    tied = np.flatnonzero(share == share[best])  # (T,) ascending, best first
    return int(tied[np.argmax(np.mean(means, axis=0)[tied])])


def route_cuda(votes_ptr: int, means_ptr: int, n_levels: int, n_classes: int, class_index: int, class_ptr: int,
               stream=0) -> None:
    """:func:`route` on the device: writes the routed class to device memory, asynchronously.

    One single-thread kernel on ``stream``; nothing synchronises with the host, so the class
    stays on the device for :meth:`GaussianMixture.intra_cuda` (same stream, or after an event).

    Args:
        votes_ptr: device pointer (int) of the (n_levels, n_classes) float32 row-major per-level
            vote shares (each row written by :meth:`GaussianMixture.inter_cuda`). Not read when
            ``class_index >= 0`` (may then be 0).
        means_ptr: device pointer (int) of the (n_levels, n_classes) float32 per-level posterior
            image means (the tie-break). Not read when ``class_index >= 0`` (may then be 0).
        n_levels: L >= 1.
        n_classes: C >= 1.
        class_index: ``-1`` to route (:func:`route` of the votes and means), or a class
            ``0..C-1`` that is written as is.
        class_ptr: device pointer (int) of the (1,) int32 output.
        stream: ``cudaStream_t`` as an int (0 = legacy default stream), or a torch / cupy /
            pycuda stream object.

    Raises:
        RuntimeError: when ``hgad_edge._C`` was built without CUDA, or on a CUDA error.
        ValueError: on bad counts, class_index or null pointers.
        TypeError: when a pointer is not an int (e.g. a tensor instead of ``tensor.data_ptr()``).
    """
    if not has_cuda():
        raise RuntimeError(_NO_CUDA)
    n_levels = _count(n_levels, "n_levels", 1)
    n_classes = _count(n_classes, "n_classes", 1)
    c = _count(class_index, "class_index", -1)
    if c >= n_classes:
        raise ValueError(f"class_index must be -1 (route) or 0..{n_classes - 1}, got {class_index}")
    votes = _device_ptr(votes_ptr, "votes_ptr", required=c < 0)
    means = _device_ptr(means_ptr, "means_ptr", required=c < 0)
    cls = _device_ptr(class_ptr, "class_ptr")
    _C.route_cuda(votes, means, n_levels, n_classes, c, cls, _stream_handle(stream, {}))


# ----------------------------------------------------------------------------- wrapper


class GaussianMixture:
    """Inference-time hierarchical GMM of one level; precomputes ||mu||², constants at construction.

    Args:
        mu: (C, D) main centers.
        log_pi_inter: (C,) log-softmaxed inter-class weights.
        mu_intra: (C, K, D) intra-class centers (``mu_intra[c, 0] == mu[c]`` normally).
        log_pi_intra: (C, K) log-softmaxed intra-class weights.
        backend: "auto" (native kernel when built, numpy otherwise), "native" or "numpy".
    """

    def __init__(self, mu, log_pi_inter, mu_intra, log_pi_intra, backend: str = "auto"):
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        self.mu = np.ascontiguousarray(mu, dtype=np.float32)  # (C, D)
        self.log_pi_inter = np.ascontiguousarray(log_pi_inter, dtype=np.float32).reshape(-1)  # (C,)
        self.mu_intra = np.ascontiguousarray(mu_intra, dtype=np.float32)  # (C, K, D)
        self.log_pi_intra = np.ascontiguousarray(log_pi_intra, dtype=np.float32)  # (C, K)
        if self.mu.ndim != 2:
            raise ValueError(f"mu must be (C, D), got shape {self.mu.shape}")
        c, d = self.mu.shape
        if c < 1 or d < 1:
            raise ValueError(f"mu must have at least one class and one dim, got shape {self.mu.shape}")
        if self.mu_intra.ndim != 3 or self.mu_intra.shape[0] != c or self.mu_intra.shape[2] != d \
                or self.mu_intra.shape[1] < 1:
            raise ValueError(f"mu_intra must be (C={c}, K>=1, D={d}), got shape {self.mu_intra.shape}")
        k = self.mu_intra.shape[1]
        if self.log_pi_inter.shape != (c,):
            raise ValueError(f"log_pi_inter must be ({c},), got shape {self.log_pi_inter.shape}")
        if self.log_pi_intra.shape != (c, k):
            raise ValueError(f"log_pi_intra must be ({c}, {k}), got shape {self.log_pi_intra.shape}")
        self.n_classes, self.n_intra, self.dim = c, k, d
        # precomputed once for the BLAS expansion of the numpy path
        self._mu_sq = np.einsum("cd,cd->c", self.mu, self.mu)  # (C,)
        self._mu_intra_sq = np.einsum("ckd,ckd->ck", self.mu_intra, self.mu_intra)  # (C, K)
        self._const = np.float32(-0.5 * LOG_2PI * d)

        if backend == "native" and _C is None:
            raise ImportError("backend='native' needs the compiled hgad_edge._C extension "
                              f"(import failed: {_IMPORT_ERROR}); rebuild with `pip install -e .` "
                              "or use backend='numpy'")
        self.backend = "native" if (backend == "native" or (backend == "auto" and _C is not None)) else "numpy"
        self._native = None
        if self.backend == "native":
            logger.debug("hgad_edge._C: CPU kernel with %d OpenMP threads, CUDA compiled: %s",
                         _C.cpu_threads(), bool(_C.has_cuda()))
            self._native = _C.GMMParams(self.mu, self.log_pi_inter, self.mu_intra, self.log_pi_intra)
        if backend == "auto" and _C is None:
            logger.info("hgad_edge._C not built (%s): GaussianMixture uses the numpy fallback", _IMPORT_ERROR)
        logger.debug("GaussianMixture(C=%d, K=%d, D=%d) uses the %s backend", c, k, d, self.backend)

    def __repr__(self) -> str:
        return (f"GaussianMixture(n_classes={self.n_classes}, n_intra={self.n_intra}, dim={self.dim}, "
                f"backend={self.backend!r})")

    # ---------------------------------------------------------------- input checks
    def _z(self, z) -> np.ndarray:
        z = np.asarray(z)
        if z.ndim != 2 or z.shape[1] != self.dim:
            raise ValueError(f"z must be (N, D={self.dim}), got shape {z.shape}")
        if z.dtype != np.float32 or not z.flags.c_contiguous:
            z = np.ascontiguousarray(z, dtype=np.float32)  # native path then runs without copies
        return z

    def _logdet(self, logdet, n: int) -> np.ndarray:
        logdet = np.ascontiguousarray(logdet, dtype=np.float32).reshape(-1)
        if logdet.shape[0] != n:
            raise ValueError(f"logdet must have N={n} elements, got {logdet.shape[0]}")
        return logdet

    def _class(self, class_index: int, allow_auto: bool) -> int:
        c = int(class_index)
        lo = -1 if allow_auto else 0
        if not lo <= c < self.n_classes:
            valid = "-1 (auto) or " if allow_auto else ""
            raise ValueError(f"class_index must be {valid}0..{self.n_classes - 1}, got {class_index}")
        return c

    # ---------------------------------------------------------------- numpy path
    def _sqdist(self, z: np.ndarray, mu: np.ndarray, mu_sq: np.ndarray) -> np.ndarray:
        z_sq = np.einsum("nd,nd->n", z, z)  # (N,)
        d = z_sq[:, None] - 2.0 * (z @ mu.T) + mu_sq[None, :]  # (N, M)
        return np.maximum(d, 0.0, out=d)  # rounding can make the expansion slightly negative

    def _np_logits(self, z: np.ndarray) -> np.ndarray:
        """Inter-class logits up to a per-row constant: −½||z||² is the same for every class and
        cancels in the softmax, so it is left out — no float32 cancellation of the expanded
        distance (error ∝ |z|·|μ| instead of |z|²). The ONNX full graph does the same."""
        return z @ self.mu.T - 0.5 * self._mu_sq[None, :] + self.log_pi_inter[None, :]  # (N, C)

    def _np_inter(self, z: np.ndarray) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        logits = self._np_logits(z)  # (N, C)
        logq = logits - _logsumexp(logits, axis=1)[:, None]  # (N, C)
        p = np.exp(logq)  # (N, C)
        entropy = -np.einsum("nc,nc->n", p, logq)  # (N,)  p underflows to 0 where logq is finite
        mean = p.sum(axis=0) / max(z.shape[0], 1)  # (C,)
        return entropy.astype(np.float32), mean.astype(np.float32), p, votes_of(p)

    def _np_intra(self, z: np.ndarray, logdet: np.ndarray, c: int) -> np.ndarray:
        d = self._sqdist(z, self.mu_intra[c], self._mu_intra_sq[c])  # (N, K)
        lse = _logsumexp(-0.5 * d + self.log_pi_intra[c][None, :], axis=1)  # (N,)
        return ((self._const + lse + logdet) / self.dim).astype(np.float32)  # (N,)

    # ---------------------------------------------------------------- public API
    def posterior(self, z) -> np.ndarray:
        """The inter-class posterior (N, C) as float32."""
        z = self._z(z)
        if self._native is not None:
            return self._native.posterior(z)
        return self._np_inter(z)[2].astype(np.float32)

    def inter(self, z) -> Tuple[np.ndarray, np.ndarray]:
        """(entropy (N,), posterior_mean (C,)) of the inter-class posterior."""
        entropy, mean, _ = self.inter_votes(z)
        return entropy, mean

    def inter_votes(self, z) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(entropy (N,), posterior_mean (C,), votes (C,)): :meth:`inter` and the vote shares
        (:func:`votes_of` of the posterior) that :func:`route` needs, in one pass."""
        z = self._z(z)
        if self._native is not None:
            return self._native.inter(z)
        entropy, mean, _, votes = self._np_inter(z)
        return entropy, mean, votes

    def intra(self, z, logdet, class_index: int) -> np.ndarray:
        """Intra-class log-likelihood / D (N,) of class ``class_index``."""
        z = self._z(z)
        logdet = self._logdet(logdet, z.shape[0])
        c = self._class(class_index, allow_auto=False)
        if self._native is not None:
            return self._native.intra(z, logdet, c)
        return self._np_intra(z, logdet, c)

    def fused_all(self, z, logdet) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(logp of every class (N, C), entropy (N,), posterior_mean (C,)) in one pass.

        The all-classes variant (C + C·K centers per position): for evaluation over classes and
        as the apples-to-apples comparison with formulas that score every class."""
        z = self._z(z)
        logdet = self._logdet(logdet, z.shape[0])
        if self._native is not None:
            return self._native.fused_all(z, logdet)
        entropy, mean, _, _ = self._np_inter(z)
        out = np.empty((z.shape[0], self.n_classes), dtype=np.float32)  # (N, C)
        for c in range(self.n_classes):
            out[:, c] = self._np_intra(z, logdet, c)
        return out, entropy, mean

    def intra_all(self, z, logdet) -> np.ndarray:
        """Intra-class log-likelihood / D of every class (N, C)."""
        return self.fused_all(z, logdet)[0]

    def fused_into(self, z, logdet, class_index: int, logp: np.ndarray, entropy: np.ndarray,
                   posterior_mean: np.ndarray) -> int:
        """:meth:`fused` writing into caller-owned float32 buffers (no allocation); returns the class."""
        z = self._z(z)
        logdet = self._logdet(logdet, z.shape[0])
        c = self._class(class_index, allow_auto=True)
        if self._native is not None:
            return int(self._native.fused_into(z, logdet, c, logp, entropy, posterior_mean))
        out = self.fused(z, logdet, c)
        logp[...], entropy[...], posterior_mean[...] = out.logp, out.entropy, out.posterior_mean
        return out.class_index

    def fused_cuda(self, z, logdet, class_index: int = -1, out: Optional[tuple] = None, stream=None) -> GMMOutput:
        """The fused kernel on the GPU, asynchronous on ``stream``.

        ``class_index=-1`` routes on THIS level alone (:func:`route` of this call's votes and
        posterior mean, L = 1), not over all levels of a model. For the model's rule on the
        device, call :meth:`inter_cuda` on every level, :func:`route_cuda`, then
        :meth:`intra_cuda` on every level.

        Args:
            z: (N, D) float32 or float16 CUDA array exposing ``__cuda_array_interface__``
                (torch, cupy, pycuda GPUArray, numba), C-contiguous.
            logdet: (N,) float32 CUDA array, same device.
            class_index: class (``>= 0``) or ``-1`` to route on the device (this level only).
            out: optional CUDA arrays (logp (N,) f32, entropy (N,) f32, posterior_mean (C,) f32,
                class (1,) int32), optionally with votes (C,) f32 before the class (5 arrays);
                allocated with torch on z's device when omitted (votes too, when 4 are given).
            stream: a ``cudaStream_t`` as an int, or an object with ``cuda_stream`` / ``handle``
                (torch, cupy, pycuda streams); default: the stream in z's interface, else the
                legacy default stream.

        Returns:
            GMMOutput of the device arrays; ``class_index`` is the (1,) int32 device array, so
            reading it (``int(...)``) synchronises, nothing else does.
        """
        if not has_cuda():
            raise RuntimeError(_NO_CUDA)
        c = self._class(class_index, allow_auto=True)
        zi = _cuda_interface(z, "z", {"<f4": False, "<f2": True})
        n, dim = zi["shape"] if len(zi["shape"]) == 2 else (None, None)
        if dim != self.dim:
            raise ValueError(f"z must be (N, D={self.dim}), got shape {zi['shape']}")
        li = _cuda_interface(logdet, "logdet", {"<f4": False})
        if tuple(li["shape"]) != (n,):
            raise ValueError(f"logdet must be ({n},), got shape {li['shape']}")
        if out is None:
            out = _torch_outputs(z, n, self.n_classes)
        if len(out) == 4:
            logp, entropy, mean, cls = out
            votes = _torch_outputs(z, 0, self.n_classes)[2]  # (C,) f32 scratch of the routing
        elif len(out) == 5:
            logp, entropy, mean, votes, cls = out
        else:
            raise ValueError(f"out must be (logp, entropy, posterior_mean, class) or (logp, entropy, "
                             f"posterior_mean, votes, class), got {len(out)} arrays")
        ptrs = [_cuda_interface(a, name, {dt: False}, (shape,))["data"][0] for a, name, dt, shape in (
            (logp, "logp", "<f4", (n,)), (entropy, "entropy", "<f4", (n,)),
            (mean, "posterior_mean", "<f4", (self.n_classes,)), (votes, "votes", "<f4", (self.n_classes,)),
            (cls, "class", "<i4", (1,)))]
        if self._native is None or self.backend != "native":
            raise RuntimeError("fused_cuda needs backend='native' or 'auto' with the extension built")
        self._native.fused_cuda(zi["data"][0], zi["half"], li["data"][0], int(n), c, *ptrs,
                                _stream_handle(stream, zi))
        return GMMOutput(logp, entropy, mean, cls)

    def _device_native(self):
        if not has_cuda():
            raise RuntimeError(_NO_CUDA)
        if self._native is None:
            raise RuntimeError("the CUDA entry points need backend='native' or 'auto' with the extension built")
        return self._native

    def inter_cuda(self, z_ptr: int, n: int, entropy_ptr: int, mean_ptr: int, votes_ptr: int, stream=0,
                   z_half: bool = False) -> None:
        """Inter part of this level on raw device pointers, asynchronous on ``stream``.

        The first step of multi-level routing on the device: one call per level, each writing its
        row of an (L, C) means buffer and of an (L, C) votes buffer, then :func:`route_cuda`, then
        :meth:`intra_cuda` per level.
        Nothing synchronises with the host (except that the first CUDA call of a mixture uploads
        its parameters to the current device, once).

        Args:
            z_ptr: device pointer (int) of z, (n, D) C-contiguous, float32 (float16 if ``z_half``).
            n: number of positions N >= 0.
            entropy_ptr: device pointer of the (n,) float32 output: entropy of the posterior.
            mean_ptr: device pointer of the (C,) float32 output: the posterior image mean, zeroed
                and accumulated by this call (all zeros when ``n == 0``).
            votes_ptr: device pointer of the (C,) float32 output: the vote shares (:func:`votes_of`
                of the posterior; integer counts, exact in any order, then one division by n).
            stream: ``cudaStream_t`` as an int (0 = legacy default stream), or a torch / cupy /
                pycuda stream object.
            z_half: z is float16 (widened to float32 in the kernel).

        Raises:
            RuntimeError: when ``hgad_edge._C`` was built without CUDA, or on a CUDA error (e.g. z
                not device memory, or on another device than the mixture).
            ValueError: ``n < 0`` or a null pointer that is needed.
            TypeError: when a pointer is not an int.
        """
        native = self._device_native()
        n = _count(n, "n", 0)
        z = _device_ptr(z_ptr, "z_ptr", required=n > 0)
        entropy = _device_ptr(entropy_ptr, "entropy_ptr", required=n > 0)
        mean = _device_ptr(mean_ptr, "mean_ptr")
        votes = _device_ptr(votes_ptr, "votes_ptr")
        native.inter_cuda(z, bool(z_half), n, entropy, mean, votes, _stream_handle(stream, {}))

    def intra_cuda(self, z_ptr: int, logdet_ptr: int, n: int, class_ptr: int, logp_ptr: int, stream=0,
                   z_half: bool = False) -> None:
        """Intra part of this level for a class held in device memory, asynchronous on ``stream``.

        The class is read inside the kernel from ``class_ptr`` (written by :func:`route_cuda` or
        by the caller), so routing needs no host synchronisation. A class outside ``0..C-1``
        there cannot raise: it gives NaN in every ``logp[i]`` and no center is read out of
        bounds (the CPU kernel follows the same rule; its host entry points raise ValueError
        first, since there the class is known on the host).

        Args:
            z_ptr: device pointer (int) of z, (n, D) C-contiguous, float32 (float16 if ``z_half``).
            logdet_ptr: device pointer of the (n,) float32 log-determinants of the flow.
            n: number of positions N >= 0 (0 launches nothing).
            class_ptr: device pointer of the (1,) int32 class.
            logp_ptr: device pointer of the (n,) float32 output: intra-class log-likelihood / D.
            stream: ``cudaStream_t`` as an int (0 = legacy default stream), or a torch / cupy /
                pycuda stream object.
            z_half: z is float16 (widened to float32 in the kernel).

        Raises:
            RuntimeError: when ``hgad_edge._C`` was built without CUDA, or on a CUDA error.
            ValueError: ``n < 0`` or a null pointer that is needed.
            TypeError: when a pointer is not an int.
        """
        native = self._device_native()
        n = _count(n, "n", 0)
        need = n > 0
        z = _device_ptr(z_ptr, "z_ptr", required=need)
        logdet = _device_ptr(logdet_ptr, "logdet_ptr", required=need)
        cls = _device_ptr(class_ptr, "class_ptr", required=need)
        logp = _device_ptr(logp_ptr, "logp_ptr", required=need)
        native.intra_cuda(z, bool(z_half), logdet, n, cls, logp, _stream_handle(stream, {}))

    def fused(self, z, logdet, class_index: int = -1) -> GMMOutput:
        """Entropy, posterior mean and logp of the given (``>= 0``) or routed (``-1``) class in one pass."""
        z = self._z(z)
        logdet = self._logdet(logdet, z.shape[0])
        c = self._class(class_index, allow_auto=True)
        if self._native is not None:
            logp, entropy, mean, routed = self._native.fused(z, logdet, c)
            return GMMOutput(logp, entropy, mean, int(routed))
        entropy, mean, _, votes = self._np_inter(z)
        if c < 0:
            c = route([votes], [mean])
        return GMMOutput(self._np_intra(z, logdet, c), entropy, mean, c)
