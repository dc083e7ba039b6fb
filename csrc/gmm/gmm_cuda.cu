// CUDA kernel: one warp per position row, lanes over D, centers staged in shared memory in
// tiles, warp-shuffle reductions. The per-element math is the HGAD_HD code of gmm.h, the same
// the CPU kernel runs. One launch for a given class; auto-routing is two launches on the same
// stream (inter, then intra reading the argmax of the device posterior mean): no host sync.
// The split entry points (inter_cuda, route_cuda, intra_cuda) are the same kernel with one part
// switched off, plus a one-thread routing kernel; the class travels in device memory. Each
// position's vote (the argmax of its posterior) is a warp argmax; the counts are integer-valued
// floats (exact in any order of the atomic adds), turned into shares by one division by N.
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <stdexcept>
#include <string>

#include "gmm.h"

namespace hgad {
namespace gmm {
namespace {

constexpr int kWarps = 8;                 // warps per block
constexpr int kThreads = kWarps * 32;     // threads per block
constexpr int kRowsPerWarp = 2;           // rows each warp keeps in shared memory
constexpr int kRowsPerBlock = kWarps * kRowsPerWarp;
constexpr int kMaxTile = 16;              // centers per shared-memory tile
constexpr size_t kSmemDefault = 48 * 1024;
constexpr unsigned kFull = 0xffffffffu;

void check(cudaError_t err, const char* what) {
  if (err != cudaSuccess) throw std::runtime_error(std::string("hgad_edge CUDA: ") + what + ": " + cudaGetErrorString(err));
}

__device__ __forceinline__ float to_float(float x) { return x; }
__device__ __forceinline__ float to_float(__half x) { return __half2float(x); }

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(kFull, v, o);
  return v;
}

// Warp-wide argmax under argmax_beats (np.argmax: first maximum, a NaN wins): every lane ends
// with the winner's index.
__device__ __forceinline__ int warp_argmax(float v, int i) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    const float ov = __shfl_xor_sync(kFull, v, o);
    const int oi = __shfl_xor_sync(kFull, i, o);
    if (argmax_beats(ov, oi, v, i)) {
      v = ov;
      i = oi;
    }
  }
  return i;
}

__device__ __forceinline__ float warp_max_skip_nan(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = max_skip_nan(v, __shfl_xor_sync(kFull, v, o));
  return v;
}

struct Shapes {
  int n_classes, n_intra, dim;
  int tile;  // centers per shared tile
};

// Dynamic shared memory: z rows (kRowsPerBlock, D) | center tile (tile, D) | logits
// (kRowsPerBlock, M) | posterior sums (C) | vote counts (C) | routed class.
__host__ __device__ inline size_t smem_bytes(const Shapes& s, int m) {
  return sizeof(float) * (static_cast<size_t>(kRowsPerBlock) * s.dim + static_cast<size_t>(s.tile) * s.dim +
                          static_cast<size_t>(kRowsPerBlock) * m + 2 * static_cast<size_t>(s.n_classes)) + sizeof(int);
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
gmm_kernel(const float* __restrict__ centers, const float* __restrict__ log_w, Shapes sh,
           const T* __restrict__ z, const float* __restrict__ logdet, int64_t n, int class_index,
           const int32_t* __restrict__ class_in, bool do_inter, bool do_intra, float* __restrict__ logp,
           float* __restrict__ entropy, float* __restrict__ mean, float* __restrict__ votes,
           int32_t* __restrict__ class_out, float inv_n) {
  const int C = sh.n_classes, K = sh.n_intra, D = sh.dim;
  const int ci = do_inter ? C : 0;
  const int m_all = ci + (do_intra ? K : 0);
  extern __shared__ float smem[];
  float* zs = smem;                                                   // (rows, D)
  float* tile = zs + static_cast<size_t>(kRowsPerBlock) * D;          // (tile, D)
  float* lg = tile + static_cast<size_t>(sh.tile) * D;                // (rows, M)
  float* s_mean = lg + static_cast<size_t>(kRowsPerBlock) * m_all;    // (C)
  float* s_votes = s_mean + C;                                        // (C)
  int* s_class = reinterpret_cast<int*>(s_votes + C);

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t row0 = static_cast<int64_t>(blockIdx.x) * kRowsPerBlock;

  if (threadIdx.x == 0) {
    int c = class_index;
    if (do_intra && class_in) c = *class_in;                 // routed by an earlier launch
    else if (do_intra && c < 0) c = route_votes(votes, mean, 1, C);  // filled by the previous launches
    *s_class = c;
    if (do_intra && blockIdx.x == 0 && class_out) *class_out = c;
  }
  for (int j = threadIdx.x; j < C; j += kThreads) s_mean[j] = s_votes[j] = 0.0f;
  // stage this block's rows of z as float (float16 input is widened here)
  for (int i = threadIdx.x; i < kRowsPerBlock * D; i += kThreads) {
    const int r = i / D, d = i % D;
    const int64_t row = row0 + r;
    zs[i] = row < n ? to_float(z[row * D + d]) : 0.0f;
  }
  __syncthreads();
  const int c_read = *s_class;
  const bool c_ok = class_in_range(c_read, C);  // false only for a bad class from device memory
  const int c = c_ok ? c_read : 0;              // addresses stay in bounds; logp is then NaN

  for (int t0 = 0; t0 < m_all; t0 += sh.tile) {
    const int nt = min(sh.tile, m_all - t0);
    __syncthreads();  // the previous tile is no longer read
    for (int i = threadIdx.x; i < nt * D; i += kThreads) {
      const int t = i / D, d = i % D;
      const int j = t0 + t;
      const int g = j < ci ? j : C + c * K + (j - ci);  // global center index
      tile[i] = centers[static_cast<int64_t>(g) * D + d];
    }
    __syncthreads();
    for (int rr = 0; rr < kRowsPerWarp; ++rr) {
      const int r = warp * kRowsPerWarp + rr;
      const float* zr = zs + static_cast<size_t>(r) * D;
      for (int t = 0; t < nt; ++t) {
        const float* mt = tile + static_cast<size_t>(t) * D;
        float acc = 0.0f;
        for (int d = lane; d < D; d += 32) acc = sq_diff_acc(acc, zr[d], mt[d]);
        acc = warp_sum(acc);
        if (lane == 0) {
          const int j = t0 + t;
          const int g = j < ci ? j : C + c * K + (j - ci);
          lg[static_cast<size_t>(r) * m_all + j] = logit_from_dist(acc, log_w[g]);
        }
      }
    }
  }
  __syncwarp();

  for (int rr = 0; rr < kRowsPerWarp; ++rr) {
    const int r = warp * kRowsPerWarp + rr;
    const int64_t row = row0 + r;
    if (row >= n) break;
    const float* x = lg + static_cast<size_t>(r) * m_all;
    if (do_inter) {
      float m = kNegInf;
      for (int j = lane; j < C; j += 32) m = max_skip_nan(m, x[j]);
      const float shift = safe_shift(warp_max_skip_nan(m));
      LseState st = lse_zero();
      for (int j = lane; j < C; j += 32) st = lse_push(st, x[j], shift);
      st.s = warp_sum(st.s);
      st.u = warp_sum(st.u);
      if (lane == 0) entropy[row] = lse_entropy(st);
      const float inv_s = 1.0f / st.s;
      float bv = kNegInf;
      int bi = 0x7fffffff;
      for (int j = lane; j < C; j += 32) {
        const float pj = softmax_prob(x[j], shift, inv_s);
        atomicAdd(&s_mean[j], pj * inv_n);
        if (argmax_beats(pj, j, bv, bi)) {
          bv = pj;
          bi = j;
        }
      }
      const int vote = warp_argmax(bv, bi);
      if (lane == 0) atomicAdd(&s_votes[vote], 1.0f);
    }
    if (do_intra) {
      float m = kNegInf;
      for (int j = ci + lane; j < m_all; j += 32) m = max_skip_nan(m, x[j]);
      const float shift = safe_shift(warp_max_skip_nan(m));
      LseState st = lse_zero();
      for (int j = ci + lane; j < m_all; j += 32) st = lse_push(st, x[j], shift);
      st.s = warp_sum(st.s);
      if (lane == 0) logp[row] = c_ok ? logp_from_lse(lse_value(st, shift), logdet[row], D) : kNaN;
    }
  }
  if (do_inter) {
    __syncthreads();
    for (int j = threadIdx.x; j < C; j += kThreads) {
      atomicAdd(&mean[j], s_mean[j]);
      if (votes) atomicAdd(&votes[j], s_votes[j]);
    }
  }
}

__global__ void write_class(int32_t* class_out, int c) { *class_out = c; }

// votes[c] = count / N, one correctly rounded division like the CPU (reduce_votes).
__global__ void share_kernel(float* __restrict__ votes, int n_classes, float fn) {
  for (int j = threadIdx.x; j < n_classes; j += blockDim.x) votes[j] = votes[j] / fn;
}

// class_out = class_index (>= 0) or route_votes of the (L, C) votes and means: one thread, the
// same HGAD_HD rule as the CPU.
__global__ void route_kernel(const float* __restrict__ votes, const float* __restrict__ means, int n_levels,
                             int n_classes, int class_index, int32_t* __restrict__ class_out) {
  *class_out = class_index >= 0 ? class_index : route_votes(votes, means, n_levels, n_classes);
}

// Restores the current device on scope exit.
class DeviceGuard {
 public:
  explicit DeviceGuard(int device) {
    check(cudaGetDevice(&prev_), "cudaGetDevice");
    if (device != prev_) check(cudaSetDevice(device), "cudaSetDevice");
  }
  ~DeviceGuard() { cudaSetDevice(prev_); }
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;

 private:
  int prev_ = 0;
};

template <typename T>
void launch(const DeviceParams& p, const T* z, const float* logdet, int64_t n, int class_index,
            const int32_t* class_in, bool do_inter, bool do_intra, float* logp, float* entropy, float* mean,
            float* votes, int32_t* class_out, cudaStream_t stream) {
  const int m_all = (do_inter ? p.n_classes : 0) + (do_intra ? p.n_intra : 0);
  Shapes sh{p.n_classes, p.n_intra, p.dim, kMaxTile};
  int max_optin = 0;
  check(cudaDeviceGetAttribute(&max_optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, p.device), "attribute");
  const size_t budget = std::max(kSmemDefault, static_cast<size_t>(max_optin));
  while (sh.tile > 1 && smem_bytes(sh, m_all) > kSmemDefault) --sh.tile;
  const size_t smem = smem_bytes(sh, m_all);
  if (smem > budget)
    throw std::runtime_error("hgad_edge CUDA: D=" + std::to_string(p.dim) + ", C=" + std::to_string(p.n_classes) +
                             ", K=" + std::to_string(p.n_intra) + " need " + std::to_string(smem) +
                             " bytes of shared memory per block; this GPU allows " + std::to_string(budget));
  if (smem > kSmemDefault)
    check(cudaFuncSetAttribute(gmm_kernel<T>, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)),
          "cudaFuncSetAttribute");
  const int64_t blocks = (n + kRowsPerBlock - 1) / kRowsPerBlock;
  if (blocks > 0x7fffffff) throw std::runtime_error("hgad_edge CUDA: too many positions");
  gmm_kernel<T><<<static_cast<unsigned>(blocks), kThreads, smem, stream>>>(
      p.centers, p.log_w, sh, z, logdet, n, class_index, class_in, do_inter, do_intra, logp, entropy, mean,
      votes, class_out, 1.0f / static_cast<float>(n));
  check(cudaGetLastError(), "kernel launch");
}

// The inter launch that fills mean and votes (both zeroed first), then the division of the counts.
template <typename T>
void launch_inter(const DeviceParams& p, const T* z, int64_t n, float* entropy, float* mean, float* votes,
                  cudaStream_t stream) {
  check(cudaMemsetAsync(mean, 0, sizeof(float) * p.n_classes, stream), "cudaMemsetAsync");
  check(cudaMemsetAsync(votes, 0, sizeof(float) * p.n_classes, stream), "cudaMemsetAsync");
  if (n == 0) return;  // no position, no mass, no vote
  launch(p, z, nullptr, n, -1, nullptr, true, false, nullptr, entropy, mean, votes, nullptr, stream);
  share_kernel<<<1, 32, 0, stream>>>(votes, p.n_classes, static_cast<float>(n));
  check(cudaGetLastError(), "kernel launch");
}

template <typename T>
void run(const DeviceParams& p, const T* z, const float* logdet, int64_t n, int class_index, float* logp,
         float* entropy, float* mean, float* votes, int32_t* class_out, cudaStream_t stream) {
  if (n == 0) {
    check(cudaMemsetAsync(mean, 0, sizeof(float) * p.n_classes, stream), "cudaMemsetAsync");
    if (votes) check(cudaMemsetAsync(votes, 0, sizeof(float) * p.n_classes, stream), "cudaMemsetAsync");
    write_class<<<1, 1, 0, stream>>>(class_out, class_index < 0 ? 0 : class_index);
    check(cudaGetLastError(), "kernel launch");
    return;
  }
  if (class_index >= 0) {
    check(cudaMemsetAsync(mean, 0, sizeof(float) * p.n_classes, stream), "cudaMemsetAsync");
    launch(p, z, logdet, n, class_index, nullptr, true, true, logp, entropy, mean, nullptr, class_out, stream);
  } else {
    launch_inter(p, z, n, entropy, mean, votes, stream);
    launch(p, z, logdet, n, -1, nullptr, false, true, logp, entropy, mean, votes, class_out, stream);
  }
}

// The device a pointer lives on; throws unless it is device (or managed) memory.
int device_of(const void* ptr, const char* name) {
  cudaPointerAttributes attr{};
  check(cudaPointerGetAttributes(&attr, ptr), (std::string("cudaPointerGetAttributes(") + name + ")").c_str());
  if (attr.type != cudaMemoryTypeDevice && attr.type != cudaMemoryTypeManaged)
    throw std::runtime_error(std::string("hgad_edge CUDA: ") + name + " is not device memory");
  return attr.device;
}

// z must be device memory on the mixture's device.
void check_z(const DeviceParams& p, const void* z) {
  if (p.centers == nullptr) throw std::runtime_error("hgad_edge CUDA: parameters were not uploaded");
  const int device = device_of(z, "z");
  if (device != p.device)
    throw std::runtime_error("hgad_edge CUDA: z is on device " + std::to_string(device) +
                             " but the mixture was uploaded to device " + std::to_string(p.device));
}

}  // namespace

DeviceParams cuda_upload(const float* mu, const float* log_pi_inter, const float* mu_intra, const float* log_pi_intra,
                         int n_classes, int n_intra, int dim) {
  DeviceParams p;
  p.n_classes = n_classes;
  p.n_intra = n_intra;
  p.dim = dim;
  check(cudaGetDevice(&p.device), "cudaGetDevice");
  const size_t n_centers = static_cast<size_t>(n_classes) * (1 + n_intra);
  check(cudaMalloc(&p.centers, sizeof(float) * n_centers * dim), "cudaMalloc");
  check(cudaMalloc(&p.log_w, sizeof(float) * n_centers), "cudaMalloc");
  const size_t inter = static_cast<size_t>(n_classes);
  check(cudaMemcpy(p.centers, mu, sizeof(float) * inter * dim, cudaMemcpyHostToDevice), "cudaMemcpy");
  check(cudaMemcpy(p.centers + inter * dim, mu_intra, sizeof(float) * (n_centers - inter) * dim,
                   cudaMemcpyHostToDevice), "cudaMemcpy");
  check(cudaMemcpy(p.log_w, log_pi_inter, sizeof(float) * inter, cudaMemcpyHostToDevice), "cudaMemcpy");
  check(cudaMemcpy(p.log_w + inter, log_pi_intra, sizeof(float) * (n_centers - inter), cudaMemcpyHostToDevice),
        "cudaMemcpy");
  return p;
}

void cuda_release(DeviceParams& p) {
  if (p.centers) cudaFree(p.centers);
  if (p.log_w) cudaFree(p.log_w);
  p.centers = nullptr;
  p.log_w = nullptr;
}

void fused_cuda(const DeviceParams& p, const void* z, bool z_half, const float* logdet, int64_t n, int class_index,
                float* logp, float* entropy, float* mean, float* votes, int32_t* class_out, uintptr_t stream) {
  if (class_index < 0 && votes == nullptr) throw std::runtime_error("hgad_edge CUDA: routing needs a votes buffer");
  if (p.centers == nullptr) throw std::runtime_error("hgad_edge CUDA: parameters were not uploaded");
  if (n > 0) check_z(p, z);
  DeviceGuard guard(p.device);
  auto s = reinterpret_cast<cudaStream_t>(stream);
  if (z_half)
    run(p, static_cast<const __half*>(z), logdet, n, class_index, logp, entropy, mean, votes, class_out, s);
  else
    run(p, static_cast<const float*>(z), logdet, n, class_index, logp, entropy, mean, votes, class_out, s);
}

void inter_cuda(const DeviceParams& p, const void* z, bool z_half, int64_t n, float* entropy, float* mean,
                float* votes, uintptr_t stream) {
  if (p.centers == nullptr) throw std::runtime_error("hgad_edge CUDA: parameters were not uploaded");
  if (n > 0) check_z(p, z);
  DeviceGuard guard(p.device);
  auto s = reinterpret_cast<cudaStream_t>(stream);
  if (z_half)
    launch_inter(p, static_cast<const __half*>(z), n, entropy, mean, votes, s);
  else
    launch_inter(p, static_cast<const float*>(z), n, entropy, mean, votes, s);
}

void intra_cuda(const DeviceParams& p, const void* z, bool z_half, const float* logdet, int64_t n,
                const int32_t* class_in, float* logp, uintptr_t stream) {
  if (p.centers == nullptr) throw std::runtime_error("hgad_edge CUDA: parameters were not uploaded");
  if (n == 0) return;
  check_z(p, z);
  DeviceGuard guard(p.device);
  auto s = reinterpret_cast<cudaStream_t>(stream);
  if (z_half)
    launch(p, static_cast<const __half*>(z), logdet, n, -1, class_in, false, true, logp, nullptr, nullptr, nullptr,
           nullptr, s);
  else
    launch(p, static_cast<const float*>(z), logdet, n, -1, class_in, false, true, logp, nullptr, nullptr, nullptr,
           nullptr, s);
}

void route_cuda(const float* votes, const float* means, int n_levels, int n_classes, int class_index,
                int32_t* class_out, uintptr_t stream) {
  const int device = device_of(class_out, "class_out");
  if (class_index < 0) {
    device_of(votes, "votes");
    device_of(means, "means");
  }
  DeviceGuard guard(device);
  route_kernel<<<1, 1, 0, reinterpret_cast<cudaStream_t>(stream)>>>(votes, means, n_levels, n_classes, class_index,
                                                                      class_out);
  check(cudaGetLastError(), "kernel launch");
}

}  // namespace gmm
}  // namespace hgad
