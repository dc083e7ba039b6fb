// Fused hierarchical Gaussian-mixture scoring of one feature level (DESIGN.md §1 "gmm").
//
// The per-element arithmetic lives here as HGAD_HD (__host__ __device__) inline functions so
// the CPU build (gmm_cpu.cpp) runs the very arithmetic the CUDA kernels (gmm_cuda.cu) run:
//   logit_j  = -1/2 * sum_d (z_d - mu_jd)^2 + log w_j            (sq_diff_acc, logit_from_dist)
//   lse      = m + log(sum_j exp(logit_j - m)),  m = max_j logit_j (exp_poly, LseState)
//   entropy  = log s - u / s,  s = sum e^{t_j},  u = sum e^{t_j} t_j,  t_j = logit_j - m
//   logp     = (-1/2 log(2 pi) D + lse + logdet) / D
// Only the summation order differs between CPU (SIMD lanes) and GPU (warp lanes).
//
// NaN policy: NaN propagates (max skips NaN, the sums then carry it); nothing raises.
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

// Class routing: argmax of the posterior mean, first maximum wins, a NaN wins (like np.argmax).
HGAD_HD int route_argmax(const float* mean, int n_classes) {
  int best = 0;
  float bv = mean[0];
  if (bv != bv) return 0;
  for (int c = 1; c < n_classes; ++c) {
    const float v = mean[c];
    if (v != v) return c;
    if (v > bv) {
      bv = v;
      best = c;
    }
  }
  return best;
}

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

// Any of entropy / mean / logp may be null (then not computed). class_index >= 0 given, -1 auto.
// posterior (N, C) may be non-null to receive the full inter posterior. Returns the class used
// for logp (or -1 when logp is null and class_index was -1).
int fused_cpu(const CpuParams& p, const float* z, const float* logdet, int64_t n, int class_index,
              float* logp, float* entropy, float* mean, float* posterior);

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

// z: (N, D) float32 or float16 (z_half) on the device; logdet (N) float32. Outputs on the
// device: logp (N), entropy (N), mean (C), class_out (1, int32). class_index -1 routes on the
// device (two launches: inter, then intra reading the argmax); >= 0 is one launch.
void fused_cuda(const DeviceParams& p, const void* z, bool z_half, const float* logdet, int64_t n,
                int class_index, float* logp, float* entropy, float* mean, int32_t* class_out,
                uintptr_t stream);
#endif

}  // namespace gmm
}  // namespace hgad
