// CPU kernel: OpenMP over blocks of positions, SIMD over a chunk of kLanes centers.
//
// Distances are computed directly as sum_d (z_d - mu_d)^2 (no ||z||^2 - 2 z.mu + ||mu||^2
// expansion: that cancels badly when z sits near a center, which is exactly where a trained
// flow puts normal features). Centers are stored transposed (D, lanes) so one SIMD register
// holds the same coordinate of kLanes centers; kRows positions share each center load.
#include <algorithm>
#include <cmath>
#include <vector>

#if defined(_OPENMP)
#include <omp.h>
#endif

#include "gmm.h"

namespace hgad {
namespace gmm {
namespace {

#if defined(__AVX512F__)
constexpr int kRows = 8;  // 8 accumulators of 16 floats = 8 zmm registers
#else
constexpr int kRows = 4;  // 4 x 16 floats = 8 ymm registers (AVX2) / 16 q registers (NEON)
#endif

// acc[r][j] = sum_d (z[r][d] - mt[d * ld + j])^2 for kRows positions and kLanes centers.
inline void dist_chunk(const float* const* zr, const float* mt, int ld, int dim, float* acc /* kRows*ld */,
                       int col) {
  float a[kRows][kLanes];
  for (int r = 0; r < kRows; ++r)
    for (int j = 0; j < kLanes; ++j) a[r][j] = 0.0f;
  for (int d = 0; d < dim; ++d) {
    const float* m = mt + static_cast<int64_t>(d) * ld;
    for (int r = 0; r < kRows; ++r) {
      const float zv = zr[r][d];
#pragma omp simd
      for (int j = 0; j < kLanes; ++j) a[r][j] = sq_diff_acc(a[r][j], zv, m[j]);
    }
  }
  for (int r = 0; r < kRows; ++r)
    for (int j = 0; j < kLanes; ++j) acc[r * ld + col + j] = a[r][j];
}

// Distances of kRows positions to all `ld` (padded) centers of a transposed (D, ld) matrix.
inline void dist_block(const float* const* zr, const float* mt, int ld, int dim, float* dist) {
  for (int q = 0; q < ld; q += kLanes) dist_chunk(zr, mt + q, ld, dim, dist, q);
}

struct Scratch {
  std::vector<float> dist;  // (kRows, max(Cp, Kp))
  std::vector<float> ebuf;  // (max(C, K)) exp terms of one row
  std::vector<double> mean;  // (C) posterior sums of this thread
  std::vector<int64_t> votes;  // (C) positions of this thread whose posterior argmax is c
  std::vector<float> prow;  // (C) one row's posterior
};

// Stable log-sum-exp state of one row's n logits log π_j − ½·d_j (from squared distances d),
// shifted by *shift (its max). kExp: also write the n shifted exp terms to e.
template <bool kExp>
inline LseState row_lse(const float* dr, const float* log_pi, int n, float* e, float* shift) {
  float m = kNegInf;
  for (int j = 0; j < n; ++j) m = max_skip_nan(m, logit_from_dist(dr[j], log_pi[j]));
  const float sh = safe_shift(m);
  float sum_s = 0.0f, sum_u = 0.0f;
#pragma omp simd reduction(+ : sum_s, sum_u)
  for (int j = 0; j < n; ++j) {
    const LseState t = lse_push(lse_zero(), logit_from_dist(dr[j], log_pi[j]), sh);
    if constexpr (kExp) e[j] = t.s;
    sum_s += t.s;
    sum_u += t.u;
  }
  *shift = sh;
  return LseState{sum_s, sum_u};
}

// log Σ_k π_k N(z; μ_k, I) of one row over K centers.
inline float mixture_lse(const float* dr, const float* log_pi, int K) {
  float sh;
  const LseState st = row_lse<false>(dr, log_pi, K, nullptr, &sh);
  return lse_value(st, sh);
}

// One row's inter-class softmax over the C main centers: e[j] gets the unnormalised probability
// of class j; the returned state gives the entropy and the normaliser.
inline LseState inter_softmax(const float* dr, const float* log_pi, int C, float* e) {
  float sh;
  return row_lse<true>(dr, log_pi, C, e, &sh);
}

// Inter part of rows [r0, r0 + nr): entropy, posterior sums, votes, optional full posterior.
void inter_rows(const CpuParams& p, const float* const* zr, int64_t r0, int nr, Scratch& s, float* entropy,
                float* posterior) {
  const int C = p.n_classes;
  dist_block(zr, p.inter_t, p.c_pad, p.dim, s.dist.data());
  float* e = s.ebuf.data();
  for (int r = 0; r < nr; ++r) {
    const float* dr = s.dist.data() + static_cast<int64_t>(r) * p.c_pad;
    const LseState st = inter_softmax(dr, p.log_pi_inter, C, e);
    if (entropy) entropy[r0 + r] = lse_entropy(st);
    const float inv_s = 1.0f / st.s;
    float* post = posterior ? posterior + (r0 + r) * C : nullptr;
    float* prow = s.prow.data();
    for (int j = 0; j < C; ++j) {
      const float pj = e[j] * inv_s;  // == softmax_prob(x_j, sh, inv_s)
      s.mean[j] += pj;
      prow[j] = pj;
      if (post) post[j] = pj;
    }
    s.votes[vote_of(prow, C)] += 1;
  }
}

// Intra part of rows [r0, r0 + nr) for class c; a class outside 0..C-1 gives NaN (as on the GPU).
void intra_rows(const CpuParams& p, const float* const* zr, const float* logdet, int64_t r0, int nr, int c,
                Scratch& s, float* logp) {
  if (!class_in_range(c, p.n_classes)) {
    std::fill(logp + r0, logp + r0 + nr, kNaN);
    return;
  }
  const int K = p.n_intra;
  const float* lw = p.log_pi_intra + static_cast<int64_t>(c) * K;
  dist_block(zr, p.intra_t + static_cast<int64_t>(c) * p.dim * p.k_pad, p.k_pad, p.dim, s.dist.data());
  for (int r = 0; r < nr; ++r) {
    const float* dr = s.dist.data() + static_cast<int64_t>(r) * p.k_pad;
    logp[r0 + r] = logp_from_lse(mixture_lse(dr, lw, K), logdet[r0 + r], p.dim);
  }
}

inline void row_pointers(const float* z, int64_t n, int dim, int64_t r0, const float** zr) {
  for (int r = 0; r < kRows; ++r) {
    const int64_t row = std::min<int64_t>(r0 + r, n - 1);  // tail rows repeat the last row
    zr[r] = z + row * dim;
  }
}

}  // namespace

int cpu_threads() {
#if defined(_OPENMP)
  return omp_get_max_threads();
#else
  return 1;
#endif
}

// One frame's level (a few hundred to a few thousand rows) runs in well under a millisecond on
// one core. Waking sleeping OpenMP workers right after ONNX Runtime used the cores was measured
// at 25–117 ms on a loaded 2-core box, so parallelism starts only from kMinRowsPerThread rows per
// thread (batches, large maps), where the wake-up is paid back.
static constexpr int64_t kMinRowsPerThread = 2048;

static int threads_for(int64_t n, int64_t n_blocks) {
  const int64_t by_rows = std::max<int64_t>(1, n / kMinRowsPerThread);
  return std::max<int>(1, static_cast<int>(std::min<int64_t>({static_cast<int64_t>(cpu_threads()), n_blocks, by_rows})));
}

static int thread_id() {
#if defined(_OPENMP)
  return omp_get_thread_num();
#else
  return 0;
#endif
}

// out[j] = Σ_t counts[t·C + j] / n in float32: the per-thread vote counts → the vote shares.
static void reduce_votes(const std::vector<int64_t>& counts, int n_threads, int C, int64_t n, float* out) {
  for (int j = 0; j < C; ++j) {
    int64_t acc = 0;
    for (int t = 0; t < n_threads; ++t) acc += counts[static_cast<size_t>(t) * C + j];
    out[j] = static_cast<float>(acc) / static_cast<float>(n);
  }
}

// out[j] = Σ_t sums[t·C + j] / n: the per-thread posterior sums (float64) → the image mean.
static void reduce_mean(const std::vector<double>& sums, int n_threads, int C, int64_t n, float* out) {
  for (int j = 0; j < C; ++j) {
    double acc = 0.0;
    for (int t = 0; t < n_threads; ++t) acc += sums[static_cast<size_t>(t) * C + j];
    out[j] = static_cast<float>(acc / static_cast<double>(n));
  }
}

int fused_cpu(const CpuParams& p, const float* z, const float* logdet, int64_t n, int class_index, float* logp,
              float* entropy, float* mean, float* votes, float* posterior) {
  const int C = p.n_classes;
  const bool do_inter = entropy || mean || votes || posterior || (logp && class_index < 0);
  if (n <= 0) {
    if (mean) std::fill(mean, mean + C, 0.0f);
    if (votes) std::fill(votes, votes + C, 0.0f);
    return logp ? std::max(class_index, 0) : class_index;
  }
  const int64_t n_blocks = (n + kRows - 1) / kRows;
  const int n_threads = threads_for(n, n_blocks);
  std::vector<double> sums(static_cast<size_t>(n_threads) * C, 0.0);
  std::vector<int64_t> counts(static_cast<size_t>(n_threads) * C, 0);
  int routed = class_index;

#pragma omp parallel num_threads(n_threads) if (n_threads > 1)
  {
    const int tid = thread_id();
    Scratch s;
    s.dist.resize(static_cast<size_t>(kRows) * std::max(p.c_pad, p.k_pad));
    s.ebuf.resize(std::max(C, p.n_intra));
    s.mean.assign(C, 0.0);
    s.votes.assign(C, 0);
    s.prow.resize(C);
    const float* zr[kRows];
    const bool fuse_one_pass = do_inter && logp && class_index >= 0;

    if (do_inter) {
#pragma omp for schedule(static)
      for (int64_t b = 0; b < n_blocks; ++b) {
        const int64_t r0 = b * kRows;
        const int nr = static_cast<int>(std::min<int64_t>(kRows, n - r0));
        row_pointers(z, n, p.dim, r0, zr);
        inter_rows(p, zr, r0, nr, s, entropy, posterior);
        if (fuse_one_pass) intra_rows(p, zr, logdet, r0, nr, class_index, s, logp);  // z rows still hot
      }
      std::copy(s.mean.begin(), s.mean.end(), sums.begin() + static_cast<int64_t>(tid) * C);
      std::copy(s.votes.begin(), s.votes.end(), counts.begin() + static_cast<int64_t>(tid) * C);
    }
#pragma omp barrier
#pragma omp single
    {
      if (do_inter) {
        std::vector<float> m(C), v(C);
        reduce_mean(sums, n_threads, C, n, m.data());
        reduce_votes(counts, n_threads, C, n, v.data());
        if (mean) std::copy(m.begin(), m.end(), mean);
        if (votes) std::copy(v.begin(), v.end(), votes);
        if (class_index < 0 && logp) routed = route_votes(v.data(), m.data(), 1, C);
      }
    }  // implicit barrier: every thread sees `routed`
    if (logp && !fuse_one_pass) {
#pragma omp for schedule(static)
      for (int64_t b = 0; b < n_blocks; ++b) {
        const int64_t r0 = b * kRows;
        const int nr = static_cast<int>(std::min<int64_t>(kRows, n - r0));
        row_pointers(z, n, p.dim, r0, zr);
        intra_rows(p, zr, logdet, r0, nr, routed, s, logp);
      }
    }
  }
  return routed;
}

void fused_all_cpu(const CpuParams& p, const float* z, const float* logdet, int64_t n, float* logp_all,
                   float* entropy, float* mean) {
  const int C = p.n_classes, K = p.n_intra;
  if (n <= 0) {
    if (mean) std::fill(mean, mean + C, 0.0f);
    return;
  }
  const int64_t n_blocks = (n + kRows - 1) / kRows;
  const int n_threads = threads_for(n, n_blocks);
  std::vector<double> sums(static_cast<size_t>(n_threads) * C, 0.0);
#pragma omp parallel num_threads(n_threads) if (n_threads > 1)
  {
    const int tid = thread_id();
    std::vector<float> dist(static_cast<size_t>(kRows) * p.a_pad);
    std::vector<float> e(C);
    std::vector<double> msum(C, 0.0);
    const float* zr[kRows];
#pragma omp for schedule(static)
    for (int64_t b = 0; b < n_blocks; ++b) {
      const int64_t r0 = b * kRows;
      const int nr = static_cast<int>(std::min<int64_t>(kRows, n - r0));
      row_pointers(z, n, p.dim, r0, zr);
      dist_block(zr, p.all_t, p.a_pad, p.dim, dist.data());
      for (int r = 0; r < nr; ++r) {
        const int64_t row = r0 + r;
        const float* dr = dist.data() + static_cast<int64_t>(r) * p.a_pad;
        // inter: the first C centers
        const LseState st = inter_softmax(dr, p.log_pi_inter, C, e.data());
        if (entropy) entropy[row] = lse_entropy(st);
        const float inv_s = 1.0f / st.s;
        for (int j = 0; j < C; ++j) msum[j] += e[j] * inv_s;
        // intra: K centers per class after them
        for (int c = 0; c < C; ++c) {
          const float* dc = dr + C + static_cast<int64_t>(c) * K;
          const float* lw = p.log_pi_intra + static_cast<int64_t>(c) * K;
          logp_all[row * C + c] = logp_from_lse(mixture_lse(dc, lw, K), logdet[row], p.dim);
        }
      }
    }
    std::copy(msum.begin(), msum.end(), sums.begin() + static_cast<int64_t>(tid) * C);
  }
  if (mean) reduce_mean(sums, n_threads, C, n, mean);
}

}  // namespace gmm
}  // namespace hgad
