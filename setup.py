"""Builds amc_kernels._C: the C++ CPU kernels always, the CUDA kernels when a toolkit is usable.

Switches (docs/design.md#8-build-and-wheels):
  AMC_KERNELS_BUILD_CPP=0     build no extension at all (pure Python: reference and Triton only)
  AMC_KERNELS_SKIP_CUDA=1     never build the CUDA kernels
  AMC_KERNELS_FORCE_CUDA=1    build the CUDA kernels even when torch or the toolkit looks unusable
  TORCH_CUDA_ARCH_LIST        default: the visible GPUs' capabilities, else "8.0;9.0+PTX"
  MAX_JOBS                    default: the number of cores
  CUDA_HOME / CUDA_PATH       toolkit root; else /usr/local/cuda, accepted only with its headers
  AMC_KERNELS_LOCAL_VERSION   1/0: add the build's local version label or not; default: add it
                              except in an sdist and in builds from an sdist, whose versions
                              must stay the sdist's for pip

The wheel's version names its build (0.2.0+cu130.torch2.14), amc_kernels/_build_info.json beside
_C records what it was built against (checked at import, before _C loads), and its platform tag
is the lowest manylinux policy that the compiled libraries satisfy (docs/design.md#8).
"""

from __future__ import annotations

import glob
import importlib.util
import json
import os
import platform
import re
import shlex
import sys
from pathlib import Path

from setuptools import find_packages, setup

try:
    from setuptools.command.bdist_wheel import bdist_wheel
except ImportError:  # setuptools < 70.1, where bdist_wheel lives in the wheel package
    from wheel.bdist_wheel import bdist_wheel

ROOT = Path(__file__).parent.resolve()
#: ptxas's registers and spills of each kernel of a CUDA build, written next to _C.
RESOURCE_REPORT = "_cuda_resources.json"
DEFAULT_ARCH_LIST = "8.0;9.0+PTX"
#: torch >= 2.13's headers need C++20, and torch's helpers add -std=c++17 for older releases; the
#: kernels are written for C++20 (lambdas capture structured bindings), so every torch gets it.
CXX_STANDARD = "-std=c++20"
#: benchmarks/ ships inside the package, so that `amc-kernels bench` works from a wheel.
PACKAGE_DIR = {"amc_kernels.benchmarks": "benchmarks"}
#: Written beside amc_kernels._C; amc_kernels._extension checks it before loading _C.
BUILD_RECORD = "_build_info.json"


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


# --- The wheel's name, build record and platform tag (docs/design.md#8-build-and-wheels) ---


def torch_release(version: str) -> str:
    """'2.14.1+cu130' -> '2.14': torch's C++ ABI changes between releases, not between patches."""
    return ".".join(version.split("+")[0].split(".")[:2])


def wants_local_label() -> bool:
    """Not for an sdist (it builds anywhere); by default not for a build from an sdist (it has
    PKG-INFO), since pip requires the version its file name gives."""
    if "sdist" in sys.argv:
        return False
    return env_flag("AMC_KERNELS_LOCAL_VERSION", not (ROOT / "PKG-INFO").is_file())


def local_version(config: dict) -> str:
    """The public version plus a local label naming the build, once _C is compiled:
    0.2.0+cu130.torch2.14 (CUDA kernels, for a CUDA 13.0 torch 2.14) or 0.2.0+cpu.torch2.14."""
    if not config["build_cpp"]:
        return config["version"]
    variant = "cu" + str(config["torch_cuda"]).replace(".", "") if config["with_cuda"] else "cpu"
    return f"{config['version']}+{variant}.torch{torch_release(config['torch'])}"


def build_record(config: dict) -> dict:
    """What _C needs of the torch it is loaded into; amc_kernels._extension checks it."""
    import torch

    return {
        "amc_kernels": local_version(config),
        "torch": config["torch"],
        "torch_release": torch_release(config["torch"]),
        "torch_cuda": config["torch_cuda"],
        "cuda_kernels": config["with_cuda"],
        "arch_list": config["arch_list"] if config["with_cuda"] else "",
        "cxx11_abi": bool(torch._C._GLIBCXX_USE_CXX11_ABI),
        "py_limited_api": "cp310",
    }


def build_ext_with_record(base: type, record: dict) -> type:
    """`base` (torch's BuildExtension) that also writes BUILD_RECORD beside each extension, in
    the build folder (and so the wheel) and, for --inplace and editable builds, in the tree."""

    class BuildExtWithRecord(base):
        def record_path(self, ext_path: str) -> str:
            return os.path.join(os.path.dirname(ext_path), BUILD_RECORD)

        def build_extension(self, ext) -> None:
            super().build_extension(ext)
            path = self.record_path(self.get_ext_fullpath(ext.name))
            Path(path).write_text(json.dumps(record, indent=2) + "\n")

        def copy_extensions_to_source(self) -> None:
            super().copy_extensions_to_source()
            for built, inplace in self._get_output_mapping():
                self.copy_file(self.record_path(built), self.record_path(inplace))

        def _get_output_mapping(self):
            for built, inplace in super()._get_output_mapping():
                yield built, inplace
                if built.endswith(".so"):
                    yield self.record_path(built), self.record_path(inplace)

    return BuildExtWithRecord


def load_elf_reader():
    """amc_kernels/_elf.py, loaded without importing the package (which imports torch's ops)."""
    spec = importlib.util.spec_from_file_location(
        "amc_kernels_elf", ROOT / "amc_kernels" / "_elf.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


#: x86_64 manylinux policies (auditwheel's manylinux-policy.json): the newest GLIBC, GLIBCXX,
#: CXXABI and GCC symbol versions each allows. From 2_28 up: torch's own wheels need glibc 2.28.
MANYLINUX_X86_64 = {
    (2, 28): {"GLIBC": (2, 28), "GLIBCXX": (3, 4, 24), "CXXABI": (1, 3, 11), "GCC": (7, 0, 0)},
    (2, 31): {"GLIBC": (2, 31), "GLIBCXX": (3, 4, 28), "CXXABI": (1, 3, 12), "GCC": (7, 0, 0)},
    (2, 35): {"GLIBC": (2, 35), "GLIBCXX": (3, 4, 30), "CXXABI": (1, 3, 13), "GCC": (7, 0, 0)},
    (2, 36): {"GLIBC": (2, 36), "GLIBCXX": (3, 4, 30), "CXXABI": (1, 3, 13), "GCC": (12, 0, 0)},
}
#: Libraries outside the manylinux whitelist that torch's wheel and its CUDA dependencies provide.
TORCH_PROVIDED = re.compile(r"lib(c10|torch)\w*\.so|libgomp\.so\.1|libcudart\.so\.\d+")
SYSTEM_LIBRARIES = {
    "libc.so.6", "libm.so.6", "libdl.so.2", "librt.so.1", "libpthread.so.0", "libgcc_s.so.1",
    "libstdc++.so.6", "ld-linux-x86-64.so.2",
}  # fmt: skip


def symbol_versions(versions: dict[str, tuple[str, ...]]) -> dict[str, tuple[int, ...]]:
    """The newest version needed per family, e.g. {"GLIBC": (2, 32), "GLIBCXX": (3, 4, 21)}."""
    newest: dict[str, tuple[int, ...]] = {}
    for names in versions.values():
        for name in names:
            family, _, number = name.partition("_")
            if family in ("GLIBC", "GLIBCXX", "CXXABI", "GCC") and re.fullmatch(r"[\d.]+", number):
                value = tuple(int(part) for part in number.split("."))
                newest[family] = max(newest.get(family, value), value)
    return newest


def lowest_policy(needed: dict[str, tuple[int, ...]]) -> str | None:
    """The lowest manylinux_2_x_x86_64 policy whose limits cover the newest symbol versions."""
    for (major, minor), limits in MANYLINUX_X86_64.items():
        if all(version <= limits[family] for family, version in needed.items()):
            return f"manylinux_{major}_{minor}_x86_64"
    return None


def manylinux_tag(libraries: list[Path]) -> str | None:
    """The wheel's manylinux tag: lowest_policy() of the compiled libraries' symbol versions,
    provided they link only to the system's libraries and torch's. None when there is none."""
    if platform.machine() != "x86_64" or not libraries:
        return None
    elf = load_elf_reader()
    needed: dict[str, tuple[int, ...]] = {}
    for library in libraries:
        info = elf.read_dynamic_info(library)
        foreign = [
            n for n in info.needed if n not in SYSTEM_LIBRARIES and not TORCH_PROVIDED.match(n)
        ]
        if foreign:
            print(f"amc-kernels: {library.name} needs {foreign}: keeping the linux tag", flush=True)
            return None
        for family, version in symbol_versions(info.versions).items():
            needed[family] = max(needed.get(family, version), version)
    return lowest_policy(needed)


class ManylinuxWheel(bdist_wheel):
    """bdist_wheel whose platform tag is manylinux_tag() of the libraries it packs."""

    def get_tag(self) -> tuple[str, str, str]:
        impl, abi, plat = super().get_tag()
        if plat == "linux_x86_64":
            plat = manylinux_tag(sorted(Path(self.bdist_dir).rglob("*.so"))) or plat
        return impl, abi, plat


def main() -> None:
    config = configure()
    print_config(config)
    ext_modules, cmdclass, options = [], {}, {}
    if config["build_cpp"]:
        ext_modules = [extension(config)]
        build_ext = build_ext_with_record(build_ext_class(config), build_record(config))
        cmdclass = {"build_ext": build_ext, "bdist_wheel": ManylinuxWheel}
        options = {"bdist_wheel": {"py_limited_api": "cp310"}}
    setup(
        version=local_version(config) if wants_local_label() else config["version"],
        packages=[*find_packages(include=["amc_kernels*"]), *PACKAGE_DIR],
        package_dir=PACKAGE_DIR,
        ext_modules=ext_modules,
        cmdclass=cmdclass,
        options=options,
    )


if __name__ == "__main__":
    main()
