// Every schema of the amc_kernels op library, declared once
// (docs/design.md#3-backends-and-dispatch), and the build information read by `amc-kernels info`.
// Kernels register in csrc/cpu and csrc/cuda.
//
// The one file that includes Python.h (no torch header we use does), and only for PyInit__C:
// it must see the limited API of Python 3.10, so that the cp310-abi3 wheel is true for every
// Python from 3.10 on. setup.py defines the macro; this checks that it is in force.
#if !defined(Py_LIMITED_API) || Py_LIMITED_API < 0x030A0000
#error "amc_kernels._C must be compiled with Py_LIMITED_API >= 0x030A0000 (set by setup.py)"
#endif
#include <Python.h>
#include <torch/library.h>
#include <torch/version.h>

#include <sstream>
#include <string>

#ifndef AMC_KERNELS_VERSION
#define AMC_KERNELS_VERSION "unknown"
#endif
#ifndef AMC_KERNELS_ARCH_LIST
#define AMC_KERNELS_ARCH_LIST ""
#endif

namespace amc_kernels {

#ifdef AMC_KERNELS_WITH_CUDA
namespace cuda {
int runtime_version();  // csrc/cuda/selfcheck_cuda.cu: CUDART_VERSION of the build
}  // namespace cuda
#endif

namespace {

std::string cuda_version_string() {
#ifdef AMC_KERNELS_WITH_CUDA
  const int version = cuda::runtime_version();
  return std::to_string(version / 1000) + "." + std::to_string((version % 1000) / 10);
#else
  return "";
#endif
}

bool built_with_openmp() {
#ifdef _OPENMP
  return true;
#else
  return false;
#endif
}

// JSON object: {"version", "torch", "cuda", "cuda_version", "arch_list", "openmp", "compiler"}.
std::string build_info() {
  std::ostringstream out;
  out << "{\"version\": \"" << AMC_KERNELS_VERSION << "\", \"torch\": \"" << TORCH_VERSION_MAJOR
      << "." << TORCH_VERSION_MINOR << "." << TORCH_VERSION_PATCH << "\", \"cuda\": "
      << (cuda_version_string().empty() ? "false" : "true") << ", \"cuda_version\": \""
      << cuda_version_string() << "\", \"arch_list\": \"" << AMC_KERNELS_ARCH_LIST
      << "\", \"openmp\": " << (built_with_openmp() ? "true" : "false")
      << ", \"compiler\": \"" << __VERSION__ << "\"}";
  return out.str();
}

}  // namespace

// Backward ops: <op>_bwd(grad, the forward's tensor inputs, its saved outputs, its options,
// extras, bool[] output_mask) returns one gradient per differentiable input of the forward, in
// the forward's order. output_mask holds one flag per such input, in the same order: a gradient
// whose flag is false is not computed and comes back as an empty [0] tensor.
TORCH_LIBRARY(amc_kernels, m) {
  m.def("build_info() -> str", &build_info);
  // Row-wise log-sum-exp through the shared online-LSE code: the build's self-check.
  m.def("_selfcheck_row_logsumexp(Tensor x) -> Tensor");

  // angular_distance: docs/design.md#21-angular_distance
  // y = None means y = x; grad_y is empty then.
  // clamp_grad_at_bounds: whether the running torch's clamp passes the gradient at its bounds.
  // output_mask: (x, y) -> (grad_x, grad_y).
  m.def("angular_distance_fwd(Tensor x, Tensor? y) -> Tensor");
  m.def(
      "angular_distance_bwd(Tensor grad, Tensor x, Tensor? y, bool clamp_grad_at_bounds, "
      "bool[] output_mask) -> (Tensor, Tensor)");

  // amc_loss: docs/design.md#22-amc_loss
  // pairs: "all" | "halves"; reduction: "mean" | "sum" | "none".
  // output_mask: (features) -> grad_features.
  m.def("amc_loss_fwd(Tensor features, Tensor labels, float margin, str pairs, str reduction) -> Tensor");
  m.def(
      "amc_loss_bwd(Tensor grad, Tensor features, Tensor labels, float margin, str pairs, "
      "str reduction, bool clamp_grad_at_bounds, bool[] output_mask) -> Tensor");

  // supcon_loss: docs/design.md#23-supcon_loss
  // features [N, V, D]; returns (loss, per-anchor log-sum-exp [A]).
  // output_mask: (features, negatives) -> (grad_features, grad_negatives); grad_negatives is
  // empty without negatives.
  m.def(
      "supcon_loss_fwd(Tensor features, Tensor? labels, Tensor? negatives, float temperature, "
      "float base_temperature, str contrast_mode, bool normalize, str reduction) -> (Tensor, Tensor)");
  m.def(
      "supcon_loss_bwd(Tensor grad, Tensor features, Tensor? labels, Tensor? negatives, Tensor lse, "
      "float temperature, float base_temperature, str contrast_mode, bool normalize, "
      "str reduction, bool[] output_mask) -> (Tensor, Tensor)");

  // gradcam: docs/design.md#24-gradcam
  // normalize: "none" | "max" | "minmax" | "sum"; output_size [] keeps H×W.
  // The forward also returns what the backward would otherwise re-read A and G for: the raw
  // map Σ_k α_k·A_k (or Σ_k G_k ⊙ A_k) before the ReLU, [B, H, W], and α = mean_hw G, [B, K]
  // ([B, 0] for "elementwise"), both fp32 (fp64 for fp64 inputs). For "mean" the backward's
  // gradient of `gradients` is constant over each channel's pixels and is returned as
  // [B, K, 1, 1], to be expanded by the caller.
  // output_mask: (activations, gradients) -> (grad_activations, grad_gradients).
  m.def(
      "gradcam_fwd(Tensor activations, Tensor gradients, str weighting, bool relu, str normalize, "
      "int[] output_size) -> (Tensor, Tensor, Tensor)");
  m.def(
      "gradcam_bwd(Tensor grad, Tensor activations, Tensor gradients, Tensor raw, Tensor alpha, "
      "str weighting, bool relu, str normalize, int[] output_size, bool[] output_mask) "
      "-> (Tensor, Tensor)");

  // class_activation_map (docs/design.md#25-class_activation_map).
  // output_mask: (activations, fc_weight) -> (grad_activations, grad_fc_weight).
  m.def("class_activation_map_fwd(Tensor activations, Tensor fc_weight, Tensor targets) -> Tensor");
  m.def(
      "class_activation_map_bwd(Tensor grad, Tensor activations, Tensor fc_weight, Tensor targets, "
      "bool[] output_mask) -> (Tensor, Tensor)");

  // cgc_loss: docs/design.md#26-cgc_loss
  // On the native h×w maps through separable interpolation matrices.
  // temperature_tensor: a 0-d floating τ on the maps' device (a learnable temperature; the float
  // temperature is then ignored), or None: τ = temperature.
  // output_mask: (cam_orig, cam_aug, temperature_tensor) -> (grad_cam_orig, grad_cam_aug,
  // grad_temperature); grad_temperature is 0-d in temperature_tensor's dtype, empty without it.
  m.def(
      "cgc_loss_fwd(Tensor cam_orig, Tensor cam_aug, Tensor crops, Tensor flips, "
      "Tensor? temperature_tensor, float temperature, int size) -> Tensor");
  m.def(
      "cgc_loss_bwd(Tensor grad, Tensor cam_orig, Tensor cam_aug, Tensor crops, Tensor flips, "
      "Tensor? temperature_tensor, float temperature, int size, bool[] output_mask) "
      "-> (Tensor, Tensor, Tensor)");

  // saliency_mask: docs/design.md#27-saliency_mask
  // No gradient. top_fraction < 0 means "use the threshold".
  m.def(
      "saliency_mask_fwd(Tensor images, Tensor saliency, float threshold, float top_fraction, "
      "float fill) -> (Tensor, Tensor)");
}

}  // namespace amc_kernels

// Importing amc_kernels._C runs the static registrations above; the module itself is empty,
// which keeps it within the Python limited API (one wheel per torch and CUDA pair).
extern "C" {
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
}
