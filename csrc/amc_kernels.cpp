// Every schema of the amc_kernels op library, declared once (DESIGN §3), and the build
// information read by `amc-kernels info`. Kernels register in csrc/cpu and csrc/cuda.
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
int cuda_runtime_version();  // csrc/cuda/selfcheck_cuda.cu: CUDART_VERSION of the build
#endif

namespace {

std::string cuda_version_string() {
#ifdef AMC_KERNELS_WITH_CUDA
  const int version = cuda_runtime_version();
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

TORCH_LIBRARY(amc_kernels, m) {
  m.def("build_info() -> str", &build_info);
  // Row-wise log-sum-exp through the shared online-LSE code: the build's self-check.
  m.def("_selfcheck_row_logsumexp(Tensor x) -> Tensor");
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
