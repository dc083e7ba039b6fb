// pybind11 bindings of the private extension hgad_edge._C (wrapped by hgad_edge/gmm.py).
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <stdexcept>
#include <string>
#include <tuple>
#include <vector>

#include "gmm/gmm.h"

namespace py = pybind11;
using FloatArray = py::array_t<float, py::array::c_style>;  // no forcecast: float32 C-contiguous only

namespace {

int pad_lanes(int x) { return (x + hgad::gmm::kLanes - 1) / hgad::gmm::kLanes * hgad::gmm::kLanes; }

void check_shape(const py::array& a, std::vector<py::ssize_t> shape, const char* name) {
  bool ok = a.ndim() == static_cast<py::ssize_t>(shape.size());
  for (size_t i = 0; ok && i < shape.size(); ++i) ok = a.shape(i) == shape[i];
  if (!ok) {
    std::string want = "(";
    for (size_t i = 0; i < shape.size(); ++i) want += (i ? ", " : "") + std::to_string(shape[i]);
    throw py::value_error(std::string(name) + " must have shape " + want + ")");
  }
}

float* out_ptr(py::array& a, std::vector<py::ssize_t> shape, const char* name) {
  if (!a.dtype().is(py::dtype::of<float>()) || !(a.flags() & py::array::c_style) || !a.writeable())
    throw py::type_error(std::string(name) + " must be a writeable C-contiguous float32 array");
  check_shape(a, std::move(shape), name);
  return static_cast<float*>(a.mutable_data());
}

#if !defined(WITH_CUDA)
[[noreturn]] void no_cuda() {
  throw std::runtime_error(
      "hgad_edge._C was built without CUDA; rebuild with FORCE_CUDA=1 pip install -e . on a machine with nvcc");
}
#endif

// Host-side checks of the raw-pointer CUDA entry points (the kernels cannot raise).
void check_n(int64_t n) {
  if (n < 0) throw py::value_error("n must be >= 0, got " + std::to_string(n));
}

void check_ptr(uintptr_t ptr, const char* name) {
  if (ptr == 0) throw py::value_error(std::string(name) + " must be a device pointer, got 0 (null)");
}

void check_class(int c, int n_classes) {
  if (c < -1 || c >= n_classes)
    throw py::value_error("class_index must be -1 (route) or 0.." + std::to_string(n_classes - 1) + ", got " +
                          std::to_string(c));
}

// _C.route_cuda: class_out = class_index, or route_votes of the (L, C) votes and means.
void route_cuda(uintptr_t votes, uintptr_t means, int n_levels, int n_classes, int class_index, uintptr_t class_out,
                uintptr_t stream) {
  if (n_levels < 1) throw py::value_error("n_levels must be >= 1, got " + std::to_string(n_levels));
  if (n_classes < 1) throw py::value_error("n_classes must be >= 1, got " + std::to_string(n_classes));
  check_class(class_index, n_classes);
  check_ptr(class_out, "class_out");
  if (class_index < 0) {
    check_ptr(votes, "votes");
    check_ptr(means, "means");
  }
#if defined(WITH_CUDA)
  py::gil_scoped_release nogil;
  hgad::gmm::route_cuda(reinterpret_cast<const float*>(votes), reinterpret_cast<const float*>(means), n_levels,
                        n_classes, class_index, reinterpret_cast<int32_t*>(class_out), stream);
#else
  (void)stream;
  no_cuda();
#endif
}

// The model side of one level, laid out once for the kernels.
class GMMParams {
 public:
  GMMParams(const FloatArray& mu, const FloatArray& log_pi_inter, const FloatArray& mu_intra,
            const FloatArray& log_pi_intra) {
    if (mu.ndim() != 2 || mu.shape(0) < 1 || mu.shape(1) < 1) throw py::value_error("mu must be (C, D), C, D >= 1");
    C_ = static_cast<int>(mu.shape(0));
    D_ = static_cast<int>(mu.shape(1));
    if (mu_intra.ndim() != 3 || mu_intra.shape(1) < 1) throw py::value_error("mu_intra must be (C, K, D), K >= 1");
    K_ = static_cast<int>(mu_intra.shape(1));
    check_shape(log_pi_inter, {C_}, "log_pi_inter");
    check_shape(mu_intra, {C_, K_, D_}, "mu_intra");
    check_shape(log_pi_intra, {C_, K_}, "log_pi_intra");
    mu_.assign(mu.data(), mu.data() + static_cast<size_t>(C_) * D_);
    mu_intra_.assign(mu_intra.data(), mu_intra.data() + static_cast<size_t>(C_) * K_ * D_);
    lpi_.assign(log_pi_inter.data(), log_pi_inter.data() + C_);
    lpk_.assign(log_pi_intra.data(), log_pi_intra.data() + static_cast<size_t>(C_) * K_);
    cp_ = pad_lanes(C_);
    kp_ = pad_lanes(K_);
    inter_t_.assign(static_cast<size_t>(D_) * cp_, 0.0f);  // (D, Cp)
    for (int c = 0; c < C_; ++c)
      for (int d = 0; d < D_; ++d) inter_t_[static_cast<size_t>(d) * cp_ + c] = mu_[static_cast<size_t>(c) * D_ + d];
    intra_t_.assign(static_cast<size_t>(C_) * D_ * kp_, 0.0f);  // (C, D, Kp)
    for (int c = 0; c < C_; ++c)
      for (int k = 0; k < K_; ++k)
        for (int d = 0; d < D_; ++d)
          intra_t_[(static_cast<size_t>(c) * D_ + d) * kp_ + k] = mu_intra_[(static_cast<size_t>(c) * K_ + k) * D_ + d];
    const int m_all = C_ + C_ * K_;  // all centers: main, then intra class by class
    ap_ = pad_lanes(m_all);
    all_t_.assign(static_cast<size_t>(D_) * ap_, 0.0f);  // (D, Ap)
    for (int j = 0; j < m_all; ++j) {
      const float* src = j < C_ ? &mu_[static_cast<size_t>(j) * D_] : &mu_intra_[static_cast<size_t>(j - C_) * D_];
      for (int d = 0; d < D_; ++d) all_t_[static_cast<size_t>(d) * ap_ + j] = src[d];
    }
  }

  ~GMMParams() {
#if defined(WITH_CUDA)
    hgad::gmm::cuda_release(dev_);
#endif
  }
  GMMParams(const GMMParams&) = delete;
  GMMParams& operator=(const GMMParams&) = delete;

  int n_classes() const { return C_; }
  int n_intra() const { return K_; }
  int dim() const { return D_; }

  // Runs the CPU kernel; any output may be null.
  int run(const FloatArray& z, const float* logdet, int c, float* logp, float* entropy, float* mean, float* votes,
          float* posterior) const {
    const int64_t n = check_z(z);
    if (c < -1 || c >= C_) throw py::value_error("class_index must be -1 (auto) or 0.." + std::to_string(C_ - 1));
    const auto p = cpu_params();
    py::gil_scoped_release nogil;
    return hgad::gmm::fused_cpu(p, z.data(), logdet, n, c, logp, entropy, mean, votes, posterior);
  }

  hgad::gmm::CpuParams cpu_params() const {
    return hgad::gmm::CpuParams{inter_t_.data(), intra_t_.data(), all_t_.data(), lpi_.data(), lpk_.data(),
                                C_, K_, D_, cp_, kp_, ap_};
  }

  int64_t check_z(const FloatArray& z) const {
    if (z.ndim() != 2 || z.shape(1) != D_)
      throw py::value_error("z must be (N, D=" + std::to_string(D_) + ") float32 C-contiguous");
    return z.shape(0);
  }
  void check_logdet(const FloatArray& logdet, int64_t n) const { check_shape(logdet, {n}, "logdet"); }

  py::tuple fused(const FloatArray& z, const FloatArray& logdet, int c) const {
    const int64_t n = check_z(z);
    check_logdet(logdet, n);
    FloatArray logp(n), entropy(n), mean(C_);
    const int routed = run(z, logdet.data(), c, logp.mutable_data(), entropy.mutable_data(), mean.mutable_data(),
                           nullptr, nullptr);
    return py::make_tuple(logp, entropy, mean, routed);
  }

  // Writes into caller-owned buffers (float32, C-contiguous, writeable: never a silent copy).
  int fused_into(const FloatArray& z, const FloatArray& logdet, int c, py::array& logp, py::array& entropy,
                 py::array& mean) const {
    const int64_t n = check_z(z);
    check_logdet(logdet, n);
    float* lp = out_ptr(logp, {n}, "logp");
    float* en = out_ptr(entropy, {n}, "entropy");
    float* me = out_ptr(mean, {C_}, "posterior_mean");
    return run(z, logdet.data(), c, lp, en, me, nullptr, nullptr);
  }

  // (entropy (N), posterior image mean (C), vote shares (C)).
  py::tuple inter(const FloatArray& z) const {
    const int64_t n = check_z(z);
    FloatArray entropy(n), mean(C_), votes(C_);
    run(z, nullptr, -1, nullptr, entropy.mutable_data(), mean.mutable_data(), votes.mutable_data(), nullptr);
    return py::make_tuple(entropy, mean, votes);
  }

  FloatArray intra(const FloatArray& z, const FloatArray& logdet, int c) const {
    const int64_t n = check_z(z);
    check_logdet(logdet, n);
    if (c < 0) throw py::value_error("intra needs class_index in 0.." + std::to_string(C_ - 1));
    FloatArray logp(n);
    run(z, logdet.data(), c, logp.mutable_data(), nullptr, nullptr, nullptr, nullptr);
    return logp;
  }

  // (logp of every class (N, C), entropy (N), posterior mean (C)) in one pass.
  py::tuple fused_all(const FloatArray& z, const FloatArray& logdet) const {
    const int64_t n = check_z(z);
    check_logdet(logdet, n);
    FloatArray out({static_cast<py::ssize_t>(n), static_cast<py::ssize_t>(C_)}), entropy(n), mean(C_);
    const auto p = cpu_params();
    float *o = out.mutable_data(), *e = entropy.mutable_data(), *m = mean.mutable_data();
    {
      py::gil_scoped_release nogil;
      hgad::gmm::fused_all_cpu(p, z.data(), logdet.data(), n, o, e, m);
    }
    return py::make_tuple(out, entropy, mean);
  }

  FloatArray posterior(const FloatArray& z) const {
    const int64_t n = check_z(z);
    FloatArray post({static_cast<py::ssize_t>(n), static_cast<py::ssize_t>(C_)});
    run(z, nullptr, -1, nullptr, nullptr, nullptr, nullptr, post.mutable_data());
    return post;
  }

  // Raw device pointers (from __cuda_array_interface__, resolved by hgad_edge/gmm.py).
  void fused_cuda(uintptr_t z, bool z_half, uintptr_t logdet, int64_t n, int c, uintptr_t logp, uintptr_t entropy,
                  uintptr_t mean, uintptr_t votes, uintptr_t class_out, uintptr_t stream) {
#if defined(WITH_CUDA)
    if (c < -1 || c >= C_) throw py::value_error("class_index must be -1 (auto) or 0.." + std::to_string(C_ - 1));
    if (n < 0) throw py::value_error("n must be >= 0");
    if (c < 0) check_ptr(votes, "votes");
    const auto& dev = device_params();
    py::gil_scoped_release nogil;
    hgad::gmm::fused_cuda(dev, reinterpret_cast<const void*>(z), z_half, reinterpret_cast<const float*>(logdet), n,
                          c, reinterpret_cast<float*>(logp), reinterpret_cast<float*>(entropy),
                          reinterpret_cast<float*>(mean), reinterpret_cast<float*>(votes),
                          reinterpret_cast<int32_t*>(class_out), stream);
#else
    (void)z, (void)z_half, (void)logdet, (void)n, (void)c, (void)logp, (void)entropy, (void)mean, (void)votes,
        (void)class_out, (void)stream;
    no_cuda();
#endif
  }

  // Inter part of this level: entropy (n), posterior image mean (C) and vote shares (C) on the device.
  void inter_cuda(uintptr_t z, bool z_half, int64_t n, uintptr_t entropy, uintptr_t mean, uintptr_t votes,
                  uintptr_t stream) {
    check_n(n);
    check_ptr(mean, "mean");
    check_ptr(votes, "votes");
    if (n > 0) {
      check_ptr(z, "z");
      check_ptr(entropy, "entropy");
    }
#if defined(WITH_CUDA)
    const auto& dev = device_params();
    py::gil_scoped_release nogil;
    hgad::gmm::inter_cuda(dev, reinterpret_cast<const void*>(z), z_half, n, reinterpret_cast<float*>(entropy),
                          reinterpret_cast<float*>(mean), reinterpret_cast<float*>(votes), stream);
#else
    (void)z_half, (void)stream;
    no_cuda();
#endif
  }

  // Intra part of this level for the class in device memory at class_ptr: logp (n).
  void intra_cuda(uintptr_t z, bool z_half, uintptr_t logdet, int64_t n, uintptr_t class_ptr, uintptr_t logp,
                  uintptr_t stream) {
    check_n(n);
    if (n > 0) {
      check_ptr(z, "z");
      check_ptr(logdet, "logdet");
      check_ptr(class_ptr, "class_ptr");
      check_ptr(logp, "logp");
    }
#if defined(WITH_CUDA)
    const auto& dev = device_params();
    py::gil_scoped_release nogil;
    hgad::gmm::intra_cuda(dev, reinterpret_cast<const void*>(z), z_half, reinterpret_cast<const float*>(logdet), n,
                          reinterpret_cast<const int32_t*>(class_ptr), reinterpret_cast<float*>(logp), stream);
#else
    (void)z_half, (void)stream;
    no_cuda();
#endif
  }

 private:
#if defined(WITH_CUDA)
  // The device copy, uploaded to the current device by the first CUDA call (synchronous, once).
  const hgad::gmm::DeviceParams& device_params() {
    if (dev_.centers == nullptr)
      dev_ = hgad::gmm::cuda_upload(mu_.data(), lpi_.data(), mu_intra_.data(), lpk_.data(), C_, K_, D_);
    return dev_;
  }
#endif

  int C_ = 0, K_ = 0, D_ = 0, cp_ = 0, kp_ = 0, ap_ = 0;
  std::vector<float> mu_, mu_intra_, lpi_, lpk_, inter_t_, intra_t_, all_t_;
#if defined(WITH_CUDA)
  hgad::gmm::DeviceParams dev_;
#endif
};

bool has_cuda() {
#if defined(WITH_CUDA)
  return true;
#else
  return false;
#endif
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "hgad_edge native kernels (private; use hgad_edge.gmm)";
  m.def("has_cuda", &has_cuda, "True when compiled with CUDA (a GPU may still be absent).");
  m.def("cpu_threads", &hgad::gmm::cpu_threads, "OpenMP threads of the CPU kernel.");
  py::class_<GMMParams>(m, "GMMParams")
      .def(py::init<const FloatArray&, const FloatArray&, const FloatArray&, const FloatArray&>(), py::arg("mu"),
           py::arg("log_pi_inter"), py::arg("mu_intra"), py::arg("log_pi_intra"))
      .def_property_readonly("n_classes", &GMMParams::n_classes)
      .def_property_readonly("n_intra", &GMMParams::n_intra)
      .def_property_readonly("dim", &GMMParams::dim)
      .def("fused", &GMMParams::fused, py::arg("z"), py::arg("logdet"), py::arg("class_index"))
      .def("fused_into", &GMMParams::fused_into, py::arg("z"), py::arg("logdet"), py::arg("class_index"),
           py::arg("logp"), py::arg("entropy"), py::arg("posterior_mean"))
      .def("inter", &GMMParams::inter, py::arg("z"))
      .def("intra", &GMMParams::intra, py::arg("z"), py::arg("logdet"), py::arg("class_index"))
      .def("posterior", &GMMParams::posterior, py::arg("z"))
      .def("fused_all", &GMMParams::fused_all, py::arg("z"), py::arg("logdet"))
      .def("fused_cuda", &GMMParams::fused_cuda, py::arg("z"), py::arg("z_half"), py::arg("logdet"), py::arg("n"),
           py::arg("class_index"), py::arg("logp"), py::arg("entropy"), py::arg("posterior_mean"), py::arg("votes"),
           py::arg("class_out"), py::arg("stream"),
           "The fused kernel on raw device pointers, asynchronous on stream. class_index -1 routes on THIS level's\n"
           "votes and posterior mean only (votes (C,) f32 is then written; it may be 0 for a given class); for the\n"
           "multi-level rule use inter_cuda per level, route_cuda, intra_cuda per level.")
      .def("inter_cuda", &GMMParams::inter_cuda, py::arg("z"), py::arg("z_half"), py::arg("n"), py::arg("entropy"),
           py::arg("mean"), py::arg("votes"), py::arg("stream"),
           "Inter part of this level on raw device pointers, asynchronous on stream (a cudaStream_t; 0 = legacy\n"
           "default). z: (n, D) float32, or float16 when z_half. Writes entropy (n,) f32, the posterior image\n"
           "mean (C,) f32 and the vote shares (C,) f32 (share of positions whose posterior argmax is c; n = 0\n"
           "gives zeros). The first CUDA call of a GMMParams uploads the mixture to the current device\n"
           "(synchronous, once).")
      .def("intra_cuda", &GMMParams::intra_cuda, py::arg("z"), py::arg("z_half"), py::arg("logdet"), py::arg("n"),
           py::arg("class_ptr"), py::arg("logp"), py::arg("stream"),
           "Intra part of this level on raw device pointers, asynchronous on stream. z: (n, D) f32 (f16 when\n"
           "z_half), logdet (n,) f32; the class is the int32 at class_ptr, read inside the kernel (no host\n"
           "sync). Writes logp (n,) f32; a class outside 0..C-1 gives NaN logp (nothing out of bounds is read).");
  m.def("route_cuda", &route_cuda, py::arg("votes"), py::arg("means"), py::arg("n_levels"), py::arg("n_classes"),
        py::arg("class_index"), py::arg("class_out"), py::arg("stream"),
        "Writes the routed class to class_out (1,) int32 on the device, asynchronous on stream (one\n"
        "single-thread kernel, no host sync). class_index >= 0 is written as is (votes, means are not read);\n"
        "-1 writes hgad_edge.gmm.route of votes and means, both (n_levels, n_classes) float32 row-major on the\n"
        "device: the largest level-mean vote share, ties by the level-mean posterior mean, then the first; a\n"
        "NaN counts as the maximum. Raises ValueError on bad arguments, RuntimeError without CUDA.");
}
