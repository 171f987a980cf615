"""Builds amc_kernels._C: the C++ CPU kernels always, the CUDA kernels when a toolkit is usable.

Switches (docs/design.md#8-build-and-wheels):
  AMC_KERNELS_BUILD_CPP=0     build no extension at all (pure Python: reference and Triton only)
  AMC_KERNELS_SKIP_CUDA=1     never build the CUDA kernels
  AMC_KERNELS_FORCE_CUDA=1    build the CUDA kernels even when torch or the toolkit looks unusable
  TORCH_CUDA_ARCH_LIST        default: the visible GPUs' capabilities, else "8.0;9.0+PTX"
  MAX_JOBS                    default: the number of cores
  CUDA_HOME / CUDA_PATH       toolkit root; else /usr/local/cuda, accepted only with its headers
"""

from __future__ import annotations

import glob
import json
import os
import re
import shlex
import sys
from pathlib import Path

from setuptools import find_packages, setup

ROOT = Path(__file__).parent.resolve()
#: ptxas's registers and spills of each kernel of a CUDA build, written next to _C.
RESOURCE_REPORT = "_cuda_resources.json"
DEFAULT_ARCH_LIST = "8.0;9.0+PTX"
#: torch >= 2.13's headers need C++20, and torch's helpers add -std=c++17 for older releases; the
#: kernels are written for C++20 (lambdas capture structured bindings), so every torch gets it.
CXX_STANDARD = "-std=c++20"
#: benchmarks/ ships inside the package, so that `amc-kernels bench` works from a wheel.
PACKAGE_DIR = {"amc_kernels.benchmarks": "benchmarks"}


def env_flag(name: str, default: bool) -> bool:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    return value.strip().lower() not in {"0", "false", "no", "off"}


def has_cuda_headers(root: str | None) -> bool:
    return bool(root) and Path(root, "include", "cuda_runtime.h").is_file()


def find_cuda_home() -> str | None:
    """CUDA_HOME, then CUDA_PATH, then the standard folder; a root counts only if it has headers."""
    for candidate in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if has_cuda_headers(candidate):
            return str(Path(candidate).resolve())
    return None


def read_version() -> str:
    text = (ROOT / "amc_kernels" / "_version.py").read_text()
    return re.search(r'__version__ = "([^"]+)"', text).group(1)


def visible_gpu_arch_list() -> str | None:
    import torch

    if not torch.cuda.is_available():
        return None
    caps = sorted({torch.cuda.get_device_capability(i) for i in range(torch.cuda.device_count())})
    return ";".join(f"{major}.{minor}" for major, minor in caps)


def configure() -> dict:
    """Decide the build before torch's helpers are imported; they read CUDA_HOME at import."""
    import torch

    build_cpp = env_flag("AMC_KERNELS_BUILD_CPP", True)
    force_cuda = env_flag("AMC_KERNELS_FORCE_CUDA", False)
    skip_cuda = env_flag("AMC_KERNELS_SKIP_CUDA", False)
    cuda_home = find_cuda_home()
    if cuda_home:
        os.environ["CUDA_HOME"] = cuda_home
    want_cuda = torch.version.cuda is not None and cuda_home is not None
    with_cuda = build_cpp and not skip_cuda and (want_cuda or force_cuda)
    if with_cuda:
        os.environ["PYTORCH_NVCC"] = resource_reporting_nvcc(cuda_home)
    if not os.environ.get("TORCH_CUDA_ARCH_LIST"):
        os.environ["TORCH_CUDA_ARCH_LIST"] = visible_gpu_arch_list() or DEFAULT_ARCH_LIST
    os.environ.setdefault("MAX_JOBS", str(os.cpu_count() or 1))
    return {
        "version": read_version(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "build_cpp": build_cpp,
        "with_cuda": with_cuda,
        "cuda_home": cuda_home,
        "arch_list": os.environ["TORCH_CUDA_ARCH_LIST"],
        "max_jobs": os.environ["MAX_JOBS"],
        "python": sys.version.split()[0],
    }


def resource_reporting_nvcc(cuda_home: str | None) -> str:
    """The nvcc command for torch's ninja file: the user's PYTORCH_NVCC (or the toolkit's nvcc),
    run through tools/nvcc_resource_usage.py, which keeps ptxas's report of each object."""
    nvcc = os.environ.get("PYTORCH_NVCC") or shlex.quote(str(Path(cuda_home or "", "bin", "nvcc")))
    if "nvcc_resource_usage.py" in nvcc:
        return nvcc  # already wrapped (setup.py configured twice in one process)
    wrapper = shlex.quote(str(ROOT / "tools" / "nvcc_resource_usage.py"))
    return f"{shlex.quote(sys.executable)} {wrapper} {nvcc} --"


def gather_resource_reports(build_temp: str, sources: list[str], arch_list: str) -> dict:
    """The build's report: every kernel of every .cu source, once per arch it was built for."""
    kernels = []
    for source in sources:
        if source.endswith(".cu"):
            objects = Path(build_temp).glob(f"**/{Path(source).with_suffix('.o')}.resources.json")
            for report in objects:
                kernels += [{"source": source, **row} for row in json.loads(report.read_text())]
    return {"arch_list": arch_list, "kernels": kernels}


def build_ext_class(config: dict):
    """torch's BuildExtension (ninja), which also writes the CUDA resource report beside _C (and
    copies it into the source tree with _C for in-place and editable builds)."""
    from torch.utils.cpp_extension import BuildExtension

    class BuildWithResourceReport(BuildExtension.with_options(use_ninja=True)):
        built_reports: dict[str, Path]

        def source_report(self, ext) -> Path:
            package = ".".join(self.get_ext_fullname(ext.name).split(".")[:-1])
            build_py = self.get_finalized_command("build_py")
            return Path(build_py.get_package_dir(package)) / RESOURCE_REPORT

        def build_extensions(self) -> None:
            super().build_extensions()
            self.built_reports = {}
            for ext in self.extensions:
                # The build folder's copy: setuptools builds there even for --inplace and -e.
                report = Path(self.get_ext_fullpath(ext.name)).parent / RESOURCE_REPORT
                self.built_reports[ext.name] = report
                if config["with_cuda"]:
                    gathered = gather_resource_reports(
                        self.build_temp, ext.sources, config["arch_list"]
                    )
                    report.write_text(json.dumps(gathered, indent=1) + "\n")
                else:
                    report.unlink(missing_ok=True)

        def copy_extensions_to_source(self) -> None:
            super().copy_extensions_to_source()
            for ext in self.extensions:
                built, in_source = self.built_reports.get(ext.name), self.source_report(ext)
                if built is not None and built.is_file():
                    in_source.write_text(built.read_text())
                else:
                    in_source.unlink(missing_ok=True)

    return BuildWithResourceReport


def print_config(config: dict) -> None:
    print("amc-kernels build configuration:", flush=True)
    for key, value in config.items():
        print(f"  {key:<11} {value}", flush=True)


def c_string(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def extension(config: dict):
    from torch.utils.cpp_extension import CppExtension, CUDAExtension

    sources = ["csrc/amc_kernels.cpp", *sorted(glob.glob("csrc/cpu/*.cpp"))]
    defines = [
        ("AMC_KERNELS_VERSION", c_string(config["version"])),
        ("AMC_KERNELS_ARCH_LIST", c_string(config["arch_list"] if config["with_cuda"] else "")),
        ("Py_LIMITED_API", "0x030A0000"),
    ]
    # -fno-math-errno and -fno-trapping-math, as torch's own build: without them gcc cannot
    # vectorise a loop that calls sqrt, nor turn a guarded division into a blend. -g0 drops the
    # debug information that Python's CFLAGS ask for (-g): it halves the compile time of each
    # file (20 s to 9 s on 2 cores), and release wheels do not ship it.
    cxx = [
        CXX_STANDARD,
        "-O3",
        "-g0",
        "-fopenmp",
        "-fno-math-errno",
        "-fno-trapping-math",
        "-Wall",
        "-Wno-unknown-pragmas",
    ]
    common = {
        "name": "amc_kernels._C",
        "include_dirs": [str(ROOT / "csrc" / "include")],
        "define_macros": defines,
        "extra_link_args": ["-fopenmp"],
        "py_limited_api": True,
    }
    if not config["with_cuda"]:
        return CppExtension(sources=sources, extra_compile_args={"cxx": cxx}, **common)
    defines.append(("AMC_KERNELS_WITH_CUDA", "1"))
    sources += sorted(glob.glob("csrc/cuda/*.cu"))
    nvcc = [CXX_STANDARD, "-O3", "-lineinfo", "--expt-relaxed-constexpr", "-Xcompiler", "-fopenmp"]
    return CUDAExtension(sources=sources, extra_compile_args={"cxx": cxx, "nvcc": nvcc}, **common)


def main() -> None:
    config = configure()
    print_config(config)
    ext_modules, cmdclass, options = [], {}, {}
    if config["build_cpp"]:
        ext_modules = [extension(config)]
        cmdclass = {"build_ext": build_ext_class(config)}
        options = {"bdist_wheel": {"py_limited_api": "cp310"}}
    setup(
        packages=[*find_packages(include=["amc_kernels*"]), *PACKAGE_DIR],
        package_dir=PACKAGE_DIR,
        ext_modules=ext_modules,
        cmdclass=cmdclass,
        options=options,
    )


if __name__ == "__main__":
    main()
