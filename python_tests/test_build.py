"""The build (docs/design.md#8-build-and-wheels): setup.py's switches, amc_kernels._C's build
information, and the shared
online log-sum-exp compiled into the extension (CPU here; CUDA on a GPU machine)."""

from __future__ import annotations

import importlib.util
import json
import math
import platform
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch
from torch.library import opcheck

import amc_kernels
from amc_kernels import _dispatch, _elf, _extension
from amc_kernels._spec import SPECS

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def setup_module_() -> ModuleType:
    if not (ROOT / "setup.py").is_file():
        pytest.skip("setup.py is not beside the tests (testing an installed wheel)")
    spec = importlib.util.spec_from_file_location("amc_setup", ROOT / "setup.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # setup() runs only under __main__
    return module


# --- setup.py ---


def test_cuda_home_needs_headers(
    setup_module_: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CUDA_HOME", str(tmp_path))  # no include/cuda_runtime.h there
    monkeypatch.delenv("CUDA_PATH", raising=False)
    found = setup_module_.find_cuda_home()
    assert found != str(tmp_path)
    (tmp_path / "include").mkdir()
    (tmp_path / "include" / "cuda_runtime.h").write_text("")
    assert setup_module_.find_cuda_home() == str(tmp_path.resolve())


@pytest.mark.parametrize(
    ("value", "expected"), [(None, True), ("", True), ("0", False), ("off", False), ("1", True)]
)
def test_env_flags(
    setup_module_: ModuleType, monkeypatch: pytest.MonkeyPatch, value: str | None, expected: bool
) -> None:
    if value is None:
        monkeypatch.delenv("AMC_KERNELS_TEST_FLAG", raising=False)
    else:
        monkeypatch.setenv("AMC_KERNELS_TEST_FLAG", value)
    assert setup_module_.env_flag("AMC_KERNELS_TEST_FLAG", True) is expected


def test_configuration_switches(setup_module_: ModuleType, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TORCH_CUDA_ARCH_LIST", raising=False)
    monkeypatch.delenv("MAX_JOBS", raising=False)
    monkeypatch.setenv("AMC_KERNELS_SKIP_CUDA", "1")
    config = setup_module_.configure()
    assert config["build_cpp"] and not config["with_cuda"]
    if not torch.cuda.is_available():
        assert config["arch_list"] == "8.0;9.0+PTX"  # always set before torch's helpers run
    assert int(config["max_jobs"]) >= 1
    monkeypatch.setenv("AMC_KERNELS_BUILD_CPP", "0")
    monkeypatch.setenv("AMC_KERNELS_SKIP_CUDA", "0")
    monkeypatch.setenv("AMC_KERNELS_FORCE_CUDA", "1")
    config = setup_module_.configure()
    assert not config["build_cpp"] and not config["with_cuda"]
    monkeypatch.setenv("AMC_KERNELS_BUILD_CPP", "1")
    assert setup_module_.configure()["with_cuda"]


def test_build_configuration_is_printed_first(
    setup_module_: ModuleType, capsys: pytest.CaptureFixture[str]
) -> None:
    setup_module_.print_config({"version": "9.9", "with_cuda": False})
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "amc-kernels build configuration:"
    assert "with_cuda" in lines[2]


@pytest.mark.parametrize(
    ("build_cpp", "with_cuda", "torch_version", "expected"),
    [
        (True, True, "2.14.1+cu130", "0.2.0+cu130.torch2.14"),
        (True, False, "2.14.1+cu130", "0.2.0+cpu.torch2.14"),
        (True, False, "2.15.0a0+git1234", "0.2.0+cpu.torch2.15"),
        (False, False, "2.14.1+cu130", "0.2.0"),
    ],
)
def test_the_local_version_names_the_build(
    setup_module_: ModuleType, build_cpp: bool, with_cuda: bool, torch_version: str, expected: str
) -> None:
    config = {"version": "0.2.0", "build_cpp": build_cpp, "with_cuda": with_cuda}
    config |= {"torch": torch_version, "torch_cuda": "13.0"}
    assert setup_module_.local_version(config) == expected


def test_sdists_and_builds_from_sdists_keep_the_plain_version(
    setup_module_: ModuleType, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("AMC_KERNELS_LOCAL_VERSION", raising=False)
    monkeypatch.setattr(setup_module_, "ROOT", tmp_path)  # a source tree: no PKG-INFO
    monkeypatch.setattr(sys, "argv", ["setup.py", "bdist_wheel"])
    assert setup_module_.wants_local_label()
    (tmp_path / "PKG-INFO").write_text("Metadata-Version: 2.4\n")  # an unpacked sdist
    assert not setup_module_.wants_local_label()
    monkeypatch.setenv("AMC_KERNELS_LOCAL_VERSION", "1")
    assert setup_module_.wants_local_label()
    monkeypatch.setattr(sys, "argv", ["setup.py", "sdist"])
    assert not setup_module_.wants_local_label()


def test_symbol_versions_keep_the_newest_of_each_family(setup_module_: ModuleType) -> None:
    versions = {
        "libc.so.6": ("GLIBC_2.14", "GLIBC_2.32", "GLIBC_2.2.5"),
        "libm.so.6": ("GLIBC_2.29",),
        "libstdc++.so.6": ("GLIBCXX_3.4.9", "CXXABI_1.3.9", "GLIBCXX_3.4.21"),
        "libgomp.so.1": ("GOMP_4.0", "OMP_1.0"),
        "libcudart.so.13": ("libcudart.so.13",),
    }
    assert setup_module_.symbol_versions(versions) == {
        "GLIBC": (2, 32),
        "GLIBCXX": (3, 4, 21),
        "CXXABI": (1, 3, 9),
    }


@pytest.mark.parametrize(
    ("needed", "expected"),
    [
        ({"GLIBC": (2, 17), "GLIBCXX": (3, 4, 21)}, "manylinux_2_28_x86_64"),
        ({"GLIBC": (2, 28), "CXXABI": (1, 3, 11)}, "manylinux_2_28_x86_64"),
        ({"GLIBC": (2, 29)}, "manylinux_2_31_x86_64"),
        ({"GLIBC": (2, 17), "GLIBCXX": (3, 4, 25)}, "manylinux_2_31_x86_64"),
        ({"GLIBC": (2, 32)}, "manylinux_2_35_x86_64"),
        ({"GCC": (12, 0, 0)}, "manylinux_2_36_x86_64"),
        ({"GLIBC": (2, 39)}, None),
    ],
)
def test_the_lowest_manylinux_policy_that_covers_the_symbols(
    setup_module_: ModuleType, needed: dict, expected: str | None
) -> None:
    assert setup_module_.lowest_policy(needed) == expected


def test_a_library_outside_torch_and_the_system_keeps_the_linux_tag(
    setup_module_: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    if platform.machine() != "x86_64":
        pytest.skip("the manylinux policies are written out for x86_64 only")
    elf = setup_module_.load_elf_reader()
    info = elf.DynamicInfo(("libtorch_cpu.so", "libc.so.6", "libopenblas.so.0"), {}, ())
    monkeypatch.setattr(elf, "read_dynamic_info", lambda path: info)
    monkeypatch.setattr(setup_module_, "load_elf_reader", lambda: elf)
    assert setup_module_.manylinux_tag([Path("_C.abi3.so")]) is None
    info = elf.DynamicInfo(("libtorch_cpu.so", "libc10_cuda.so", "libcudart.so.13"), {}, ())
    assert setup_module_.manylinux_tag([Path("_C.abi3.so")]) == "manylinux_2_28_x86_64"


# --- amc_kernels._C ---

needs_extension = pytest.mark.skipif(not _extension.available(), reason="amc_kernels._C not built")


@needs_extension
@pytest.mark.cpp
def test_build_info_describes_this_build() -> None:
    info = _extension.build_info()
    assert info["version"] == amc_kernels.__version__
    assert torch.__version__.startswith(info["torch"])
    assert info["openmp"] is True
    if info["cuda"]:
        assert info["cuda_version"] == torch.version.cuda
        assert info["arch_list"]
    else:
        assert info["cuda_version"] == ""


LSE_DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)]


@needs_extension
@pytest.mark.cpp
@pytest.mark.parametrize("device", LSE_DEVICES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16, torch.bfloat16])
def test_shared_online_logsumexp(device: str, dtype: torch.dtype) -> None:
    x = (torch.randn(9, 1537, dtype=torch.float64) * 20).to(device, dtype)
    got = torch.ops.amc_kernels._selfcheck_row_logsumexp(x)
    assert got.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    expected = torch.logsumexp(x.double(), dim=1)
    tolerance = 1e-12 if dtype == torch.float64 else 1e-4
    torch.testing.assert_close(got.double(), expected, rtol=tolerance, atol=tolerance)


@needs_extension
@pytest.mark.cpp
@pytest.mark.parametrize("device", LSE_DEVICES)
def test_online_logsumexp_edge_cases(device: str) -> None:
    inf = math.inf
    x = torch.tensor(
        [[-inf, -inf, -inf], [1e30, 1e30, -inf], [-1e30, -1e30, -1e30], [0.0, -inf, 0.0]],
        dtype=torch.float64,
        device=device,
    )
    got = torch.ops.amc_kernels._selfcheck_row_logsumexp(x).cpu()
    expected = [-inf, 1e30 + math.log(2), -1e30 + math.log(3), math.log(2)]
    torch.testing.assert_close(got, torch.tensor(expected, dtype=torch.float64), rtol=1e-15, atol=0)
    empty = torch.ops.amc_kernels._selfcheck_row_logsumexp(x[:0])
    assert empty.shape == (0,)


@needs_extension
@pytest.mark.cpp
def test_selfcheck_rejects_bad_input() -> None:
    with pytest.raises(RuntimeError, match="_selfcheck_row_logsumexp: x must have 2 dimensions"):
        torch.ops.amc_kernels._selfcheck_row_logsumexp(torch.zeros(3))
    with pytest.raises(RuntimeError, match="x must be a floating-point tensor"):
        torch.ops.amc_kernels._selfcheck_row_logsumexp(torch.zeros(3, 2, dtype=torch.long))


@needs_extension
@pytest.mark.cpp
def test_selfcheck_opcheck() -> None:
    opcheck(torch.ops.amc_kernels._selfcheck_row_logsumexp.default, (torch.randn(5, 33),))


# --- the CUDA kernels of a CUDA build (compiled here, run only on a GPU machine) ---

CUDA_BUILD = _extension.available() and bool(_extension.build_info()["cuda"])
needs_cuda_build = pytest.mark.skipif(not CUDA_BUILD, reason="amc_kernels._C has no CUDA kernels")
#: The most spill bytes (stores or loads) a kernel may have per thread (issue: CUDA kernels).
SPILL_LIMIT_BYTES = 256


def real_arches(arch_list: str) -> set[str]:
    """The SASS targets of TORCH_CUDA_ARCH_LIST: "8.0;9.0+PTX" -> {"sm_80", "sm_90"}."""
    arches = arch_list.replace(",", ";").replace(" ", ";").split(";")
    return {"sm_" + arch.removesuffix("+PTX").replace(".", "") for arch in arches if arch}


@pytest.fixture(scope="module")
def resource_report() -> dict:
    """setup.py's ptxas report (tools/nvcc_resource_usage.py): one row per kernel and arch."""
    path = Path(amc_kernels.__file__).parent / "_cuda_resources.json"
    assert path.is_file(), f"{path} is missing: rebuild _C with setup.py (it writes the report)"
    return json.loads(path.read_text())


def demangled(names: list[str]) -> list[str]:
    """C++ names of mangled kernel names (c++filt, when it is installed)."""
    if shutil.which("c++filt") is None:
        return names
    result = subprocess.run(["c++filt"], input="\n".join(names), capture_output=True, text=True)
    lines = result.stdout.splitlines()
    return lines if result.returncode == 0 and len(lines) == len(names) else names


def resource_table(kernels: list[dict]) -> str:
    rows = [f"{'regs':>4} {'spill st/ld':>11}  arch   source: kernel"]
    ordered = sorted(kernels, key=lambda r: (r["source"], r["kernel"], r["arch"]))
    for row, name in zip(ordered, demangled([r["kernel"] for r in ordered]), strict=True):
        spills = f"{row['spill_stores']}/{row['spill_loads']}"
        where = f"{Path(row['source']).name}: {name}"
        where = where if len(where) <= 120 else where[:117] + "..."
        rows.append(f"{row['registers']:>4} {spills:>11}  {row['arch']}  {where}")
    return "\n".join(rows)


@needs_cuda_build
@pytest.mark.cuda_build
def test_cuda_kernels_do_not_spill(
    resource_report: dict, capsys: pytest.CaptureFixture[str]
) -> None:
    kernels = resource_report["kernels"]
    with capsys.disabled():  # the report belongs in the CI log
        print(f"\nptxas resource usage of {len(kernels)} kernel builds:\n{resource_table(kernels)}")
    spilling = [
        row for row in kernels if max(row["spill_stores"], row["spill_loads"]) > SPILL_LIMIT_BYTES
    ]
    assert not spilling, f"spills above {SPILL_LIMIT_BYTES} B:\n{resource_table(spilling)}"


@needs_cuda_build
@pytest.mark.cuda_build
def test_every_cuda_source_has_its_kernels_for_every_arch(resource_report: dict) -> None:
    arches = real_arches(resource_report["arch_list"])
    assert arches == real_arches(_extension.build_info()["arch_list"])
    sources = {row["source"] for row in resource_report["kernels"]}
    in_tree = {f"csrc/cuda/{path.name}" for path in (ROOT / "csrc" / "cuda").glob("*.cu")}
    assert in_tree <= sources, f"no kernels reported for {sorted(in_tree - sources)}"
    for source in sorted(sources):
        by_arch = {arch: set() for arch in arches}
        for row in resource_report["kernels"]:
            if row["source"] == source:
                by_arch.setdefault(row["arch"], set()).add(row["kernel"])
        everywhere = set.intersection(*by_arch.values())
        for arch, kernels in by_arch.items():
            assert kernels, f"{source}: no kernels for {arch}"
            assert kernels == everywhere, f"{source}: {sorted(kernels - everywhere)} only on {arch}"


@needs_cuda_build
@pytest.mark.cuda_build
@pytest.mark.parametrize("op", sorted(SPECS))
def test_every_op_has_cuda_kernels(op: str) -> None:
    for stage in ("fwd", "bwd") if SPECS[op].differentiable else ("fwd",):
        assert _dispatch.has_kernel(f"{op}_{stage}", "CUDA"), f"{op}_{stage} has no CUDA kernel"


def ptx_arches(arch_list: str) -> set[str]:
    """The PTX targets of TORCH_CUDA_ARCH_LIST: "8.0;9.0+PTX" -> {"sm_90"}."""
    arches = arch_list.replace(",", ";").replace(" ", ";").split(";")
    return {"sm_" + arch.removesuffix("+PTX").replace(".", "") for arch in arches if "+PTX" in arch}


@pytest.mark.cuda_build
@pytest.mark.skipif(shutil.which("nvcc") is None, reason="needs nvcc")
def test_fatbin_reader_lists_what_nvcc_compiled(tmp_path: Path) -> None:
    """The reader that stands in for cuobjdump, on an object whose images are known."""
    source = tmp_path / "scale.cu"
    source.write_text("__global__ void scale(float* x) { x[threadIdx.x] *= 2.0f; }\n")
    obj = tmp_path / "scale.o"  # an object, as torch's build compiles each .cu (no device link)
    gencode = ["-gencode=arch=compute_80,code=sm_80", "-gencode=arch=compute_90,code=compute_90"]
    subprocess.run(["nvcc", "-c", *gencode, str(source), "-o", str(obj)], check=True)
    assert sorted(_elf.read_cuda_images(obj)) == [
        _elf.CudaImage("elf", "sm_80"),
        _elf.CudaImage("ptx", "sm_90"),
    ]


@needs_cuda_build
@pytest.mark.cuda_build
def test_c_holds_machine_code_for_every_arch(capsys: pytest.CaptureFixture[str]) -> None:
    """What `cuobjdump --list-elf --list-ptx` shows of _C: a cubin for every arch of the build
    and PTX for each "+PTX" arch (checked against cuobjdump itself where it is installed)."""
    (library,) = _extension.extension_files()
    images = _elf.read_cuda_images(library)
    arch_list = _extension.build_info()["arch_list"]
    with capsys.disabled():
        counts = {image: images.count(image) for image in sorted(set(images))}
        print(f"\nCUDA images in {library.name}: {counts}")
    assert {image.arch for image in images if image.kind == "elf"} == real_arches(arch_list)
    assert {image.arch for image in images if image.kind == "ptx"} == ptx_arches(arch_list)
    if shutil.which("cuobjdump"):
        listed = subprocess.run(
            ["cuobjdump", "--list-elf", str(library)], check=True, capture_output=True, text=True
        ).stdout
        for arch in real_arches(arch_list):
            assert arch in listed, f"cuobjdump lists no {arch} cubin in {library}"
