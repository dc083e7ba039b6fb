// Fused hierarchical Gaussian-mixture scoring of one feature level (docs/design.md §1 "gmm").
//
// The per-element arithmetic lives here as HGAD_HD (__host__ __device__) inline functions so
// the CPU build (gmm_cpu.cpp) runs the very arithmetic the CUDA kernels (gmm_cuda.cu) run:
//   logit_j  = -1/2 * sum_d (z_d - mu_jd)^2 + log w_j            (sq_diff_acc, logit_from_dist)
//   lse      = m + log(sum_j exp(logit_j - m)),  m = max_j logit_j (exp_poly, LseState)
//   entropy  = log s - u / s,  s = sum e^{t_j},  u = sum e^{t_j} t_j,  t_j = logit_j - m
//   logp     = (-1/2 log(2 pi) D + lse + logdet) / D
//   vote_n   = argmax_c posterior[n, c]; votes[c] = #{n: vote_n = c} / N   (vote_of)
//   routing  = argmax_c (1/L) sum_l votes_l[c], ties by (1/L) sum_l mean_l[c] (route_votes; L = 1: one level)
// Only the summation order differs between CPU (SIMD lanes) and GPU (warp lanes).
//
// NaN policy: NaN propagates (max skips NaN, the sums then carry it); nothing raises. A class
// index outside 0..C-1 that reaches a kernel (only possible on the GPU, where the class is read
// from device memory; the host entry points validate theirs) gives NaN logp, never a read out of
// bounds (class_in_range, CPU and GPU alike).
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>

#if defined(__CUDACC__)
#define HGAD_HD __host__ __device__ __forceinline__
#else
#define HGAD_HD inline
#endif

namespace hgad {
namespace gmm {

constexpr float kLog2Pi = 1.8378770664093453f;  // log(2 pi)
constexpr float kNegInf = -std::numeric_limits<float>::infinity();
constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();

HGAD_HD int32_t float_bits(float x) {
#if defined(__CUDA_ARCH__)
  return __float_as_int(x);
#else
  int32_t i;
  std::memcpy(&i, &x, sizeof(i));
  return i;
#endif
}

HGAD_HD float bits_float(int32_t i) {
#if defined(__CUDA_ARCH__)
  return __int_as_float(i);
#else
  float x;
  std::memcpy(&x, &i, sizeof(x));
  return x;
#endif
}

// exp(x) in float32 with a Cephes polynomial (about 1 ulp), branch-free so it vectorizes on the
// CPU and maps to FMAs on the GPU. x < -87.3 (and -inf) gives 0, NaN gives NaN. Used only on
// arguments <= 0 (after the max is subtracted), so the upper clamp is just a guard.
HGAD_HD float exp_poly(float x) {
  const float magic = 12582912.0f;  // 1.5 * 2^23: adding it rounds to the nearest integer
  float xc = x > 88.0f ? 88.0f : x;
  xc = xc < -87.0f ? -87.0f : xc;  // NaN compares false and stays NaN
  const float t = fmaf(xc, 1.44269504088896341f, magic);
  const float n = t - magic;
  float r = fmaf(n, -0.693359375f, xc);
  r = fmaf(n, 2.12194440e-4f, r);
  float p = 1.9875691500e-4f;
  p = fmaf(p, r, 1.3981999507e-3f);
  p = fmaf(p, r, 8.3334519073e-3f);
  p = fmaf(p, r, 4.1665795894e-2f);
  p = fmaf(p, r, 1.6666665459e-1f);
  p = fmaf(p, r, 5.0000001201e-1f);
  p = fmaf(p, r * r, r) + 1.0f;
  const int32_t ni = float_bits(t) - float_bits(magic);  // n as an integer, in [-126, 127]
  const float scale = bits_float((ni + 127) << 23);
  const float y = p * scale;
  return x < -87.3f ? 0.0f : y;
}

// One term of a squared distance: acc + (a - b)^2.
HGAD_HD float sq_diff_acc(float acc, float a, float b) {
  const float t = a - b;
  return fmaf(t, t, acc);
}

// A mixture logit from a squared distance and a log-weight.
HGAD_HD float logit_from_dist(float dist, float log_w) { return fmaf(-0.5f, dist, log_w); }

// max that skips NaN (the NaN is then carried by the sums): same rule on CPU and GPU.
HGAD_HD float max_skip_nan(float m, float x) { return x > m ? x : m; }

// The shift used by the sums: an all -inf row keeps 0 so that exp(-inf - 0) = 0 (not NaN).
HGAD_HD float safe_shift(float m) { return m == kNegInf ? 0.0f : m; }

// Partial sums of one softmax given its shift m: s = sum e^{t}, u = sum e^{t} t, t = x - m.
struct LseState {
  float s;
  float u;
};

HGAD_HD LseState lse_zero() { return LseState{0.0f, 0.0f}; }

HGAD_HD LseState lse_push(LseState a, float x, float shift) {
  const float t = x - shift;
  const float e = exp_poly(t);
  // e == 0 where t = -inf: skip its product (0 * -inf would be NaN)
  a.s += e;
  a.u += e > 0.0f ? e * t : (e == e ? 0.0f : e);
  return a;
}

HGAD_HD LseState lse_merge(LseState a, LseState b) { return LseState{a.s + b.s, a.u + b.u}; }

// log-sum-exp of the pushed values.
HGAD_HD float lse_value(LseState a, float shift) { return shift + logf(a.s); }

// Entropy -sum p log p of the softmax of the pushed values.
HGAD_HD float lse_entropy(LseState a) { return logf(a.s) - a.u / a.s; }

// Posterior probability of one value x once s is known.
HGAD_HD float softmax_prob(float x, float shift, float inv_s) { return exp_poly(x - shift) * inv_s; }

// The intra-class log-likelihood / D.
HGAD_HD float logp_from_lse(float lse, float logdet, int dim) {
  const float fd = static_cast<float>(dim);
  return (-0.5f * kLog2Pi * fd + lse + logdet) / fd;
}

// (v, i) beats (bv, bi) in a first-maximum argmax where a NaN wins (the first NaN): np.argmax.
HGAD_HD bool argmax_beats(float v, int i, float bv, int bi) {
  const bool vn = v != v, bn = bv != bv;
  if (vn || bn) return vn && (!bn || i < bi);
  return v > bv || (v == bv && i < bi);
}

// The class a position votes for: np.argmax of its posterior row p (C).
HGAD_HD int vote_of(const float* p, int n_classes) {
  int best = 0;
  for (int c = 1; c < n_classes; ++c)
    if (argmax_beats(p[c], c, p[best], best)) best = c;
  return best;
}

// (1/L) sum_l a[l, c] of an (L, C) row-major array: the same sequential float32 sum over l, then
// one correctly rounded division by L, as np.mean(a, axis=0) of float32.
HGAD_HD float level_mean(const float* a, int n_levels, int n_classes, int c) {
  float s = a[c];
  for (int l = 1; l < n_levels; ++l) s += a[static_cast<int64_t>(l) * n_classes + c];
  return s / static_cast<float>(n_levels);
}

// THE routing rule over L levels (hgad_edge.gmm.route): votes (L, C) is per level the share of
// positions whose posterior argmax is c (count / N), means (L, C) the posterior image means.
// The class with the largest level-mean vote share wins; among classes tied on it, the larger
// level-mean posterior mean, then the first. A NaN wins where it is compared (the first NaN),
// like np.argmax. L = 1 is one level (fused with class -1).
HGAD_HD int route_votes(const float* votes, const float* means, int n_levels, int n_classes) {
  int best = 0;
  float bv = level_mean(votes, n_levels, n_classes, 0);
  for (int c = 1; c < n_classes; ++c) {
    const float v = level_mean(votes, n_levels, n_classes, c);
    if (argmax_beats(v, c, bv, best)) {
      bv = v;
      best = c;
    }
  }
  if (bv != bv) return best;
  int pick = best;
  float pv = level_mean(means, n_levels, n_classes, best);
  for (int c = best + 1; c < n_classes; ++c) {
    if (level_mean(votes, n_levels, n_classes, c) != bv) continue;
    const float m = level_mean(means, n_levels, n_classes, c);
    if (argmax_beats(m, c, pv, pick)) {
      pv = m;
      pick = c;
    }
  }
  return pick;
}

// Whether an intra-class index may be used to address the centers; otherwise logp is NaN.
HGAD_HD bool class_in_range(int c, int n_classes) { return c >= 0 && c < n_classes; }

// ------------------------------------------------------------------------------ CPU entry points
// Model-side arrays are laid out once by the bindings (see GMMParams in bindings.cpp):
//   inter_t  (D, Cp)        main centers, transposed, padded to Cp = multiple of kLanes
//   intra_t  (C, D, Kp)     intra centers per class, transposed, padded to Kp
//   all_t    (D, Ap)        main then all intra centers, transposed, padded to Ap (all-classes)
//   log_pi_inter (C), log_pi_intra (C, K)
constexpr int kLanes = 16;

struct CpuParams {
  const float* inter_t;
  const float* intra_t;
  const float* all_t;
  const float* log_pi_inter;
  const float* log_pi_intra;
  int n_classes, n_intra, dim, c_pad, k_pad, a_pad;
};

// Any of entropy / mean / votes / logp may be null (then not written). class_index >= 0 given, -1
// auto (route_votes of this call's votes and mean, L = 1). votes (C): share of the positions whose
// posterior argmax is c. posterior (N, C) may be non-null to receive the full inter posterior.
// Returns the class used for logp (or -1 when logp is null and class_index was -1).
int fused_cpu(const CpuParams& p, const float* z, const float* logdet, int64_t n, int class_index,
              float* logp, float* entropy, float* mean, float* votes, float* posterior);

// The all-classes variant in one pass over the C + C*K centers: logp of every class (N, C),
// row-major, and (when non-null) entropy (N) and posterior mean (C).
void fused_all_cpu(const CpuParams& p, const float* z, const float* logdet, int64_t n, float* logp_all,
                   float* entropy, float* mean);

// OpenMP threads the CPU kernel uses (1 without OpenMP).
int cpu_threads();

// ------------------------------------------------------------------------------ CUDA entry points
#if defined(WITH_CUDA)
struct DeviceParams {
  float* centers = nullptr;  // (C + C*K, D): main centers, then intra centers class by class
  float* log_w = nullptr;    // (C + C*K)
  int n_classes = 0, n_intra = 0, dim = 0, device = -1;
};

DeviceParams cuda_upload(const float* mu, const float* log_pi_inter, const float* mu_intra,
                         const float* log_pi_intra, int n_classes, int n_intra, int dim);
void cuda_release(DeviceParams& p);

// All entry points below are asynchronous on `stream` (a cudaStream_t; 0 = legacy default) and
// never synchronise with the host, so a class routed on the device stays there.

// z: (N, D) float32 or float16 (z_half) on the device; logdet (N) float32. Outputs on the
// device: logp (N), entropy (N), mean (C), votes (C), class_out (1, int32). class_index -1 routes
// on the device on THIS level only (route_votes of this call's votes and mean; inter, vote
// shares, then intra reading the class); >= 0 is one launch (votes are then not written). For the
// multi-level rule use inter_cuda per level, route_cuda, then intra_cuda per level.
void fused_cuda(const DeviceParams& p, const void* z, bool z_half, const float* logdet, int64_t n,
                int class_index, float* logp, float* entropy, float* mean, float* votes, int32_t* class_out,
                uintptr_t stream);

// Inter part of one level. z (N, D) f32/f16 on the device; outputs entropy (N), the image mean
// of the posterior (C) and the vote shares (C): per class the count of positions whose posterior
// argmax it is (integer-valued floats, exact in any order), then one division by N (N = 0: all
// zeros, no kernel).
void inter_cuda(const DeviceParams& p, const void* z, bool z_half, int64_t n, float* entropy, float* mean,
                float* votes, uintptr_t stream);

// Intra part of one level for the class stored at class_in (1, int32, device), read inside the
// kernel. z (N, D) f32/f16, logdet (N) f32; output logp (N). A class outside 0..C-1 gives NaN
// logp (no center is read for it). N = 0: nothing is launched.
void intra_cuda(const DeviceParams& p, const void* z, bool z_half, const float* logdet, int64_t n,
                const int32_t* class_in, float* logp, uintptr_t stream);

// class_out (1, int32, device) = class_index when >= 0, else route_votes of votes and means
// (n_levels, n_classes) f32 row-major on the device (not read when class_index >= 0). One
// single-thread launch on the device that holds class_out.
void route_cuda(const float* votes, const float* means, int n_levels, int n_classes, int class_index,
                int32_t* class_out, uintptr_t stream);
#endif

}  // namespace gmm
}  // namespace hgad
