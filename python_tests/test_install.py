"""An installed amc-kernels next to the wrong torch, without amc_kernels._C, or with one that
does not load (docs/design.md#8-build-and-wheels). Each case runs in a fresh interpreter on a
copy of the package in use, whose build record or _C is rewritten: no second torch is needed."""

from __future__ import annotations

import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import amc_kernels
from amc_kernels import _elf, _extension

PACKAGE = Path(amc_kernels.__file__).resolve().parent
#: Not an ELF file: a copy with this as _C shows whether _C was ever handed to the loader.
NOT_A_LIBRARY = b"this is not a shared library\n"

needs_extension = pytest.mark.skipif(not _extension.available(), reason="amc_kernels._C not built")


def record_for(torch_version: str, torch_cuda: str | None, cuda_kernels: bool) -> dict:
    """A build record as setup.py writes it, for a _C built against the given torch."""
    release = _extension.torch_release(torch_version)
    variant = "cu" + torch_cuda.replace(".", "") if cuda_kernels else "cpu"
    return {
        "amc_kernels": f"{amc_kernels.__version__}+{variant}.torch{release}",
        "torch": torch_version,
        "torch_release": release,
        "torch_cuda": torch_cuda,
        "cuda_kernels": cuda_kernels,
        "arch_list": "8.0;9.0+PTX" if cuda_kernels else "",
        "cxx11_abi": bool(torch._C._GLIBCXX_USE_CXX11_ABI),
        "py_limited_api": "cp310",
    }


def this_torch_record() -> dict:
    return record_for(torch.__version__, torch.version.cuda, cuda_kernels=False)


def package_copy(root: Path, record: dict | None, extension: bytes | None) -> Path:
    """amc_kernels copied under `root`, its _C replaced by `extension` (none when None) and its
    build record by `record` (none when None)."""
    target = root / "amc_kernels"
    shutil.copytree(PACKAGE, target, ignore=shutil.ignore_patterns("__pycache__", "_C.*", "_C*.so"))
    (target / _extension.RECORD_NAME).unlink(missing_ok=True)
    if extension is not None:
        (target / "_C.abi3.so").write_bytes(extension)
    if record is not None:
        (target / _extension.RECORD_NAME).write_text(json.dumps(record))
    return root


def run_python(root: Path, code: str, **env: str) -> subprocess.CompletedProcess[str]:
    """`code` in a fresh interpreter that imports amc_kernels from `root`."""
    environment = {**os.environ, "PYTHONPATH": str(root)}
    environment.pop("TRITON_INTERPRET", None)  # the tests' own setting stays theirs
    environment.update(env)
    return subprocess.run(
        [sys.executable, "-c", code], cwd=root, env=environment, capture_output=True, text=True
    )


# --- the build record against the running torch ---


def test_a_patch_release_of_the_same_torch_is_accepted() -> None:
    record = record_for("2.14.0+cu130", "13.0", cuda_kernels=True)
    assert _extension.mismatches(record, "2.14.1+cu130", "13.0", record["cxx11_abi"]) == []
    assert _extension.mismatches(record, "2.14.1", "13.2", record["cxx11_abi"]) == []


def test_another_torch_release_cuda_major_or_abi_is_refused() -> None:
    record = record_for("2.14.1+cu130", "13.0", cuda_kernels=True)
    abi = record["cxx11_abi"]
    assert _extension.mismatches(record, "2.13.0+cu130", "13.0", abi) == ["torch 2.14"]
    assert _extension.mismatches(record, "2.14.1+cu126", "12.6", abi) == [
        "a torch built for CUDA 13.x (this one has CUDA 12.6)"
    ]
    assert _extension.mismatches(record, "2.14.1+cpu", None, abi) == [
        "a torch built for CUDA 13.x (this one has no CUDA)"
    ]
    assert _extension.mismatches(record, "2.14.1+cu130", "13.0", not abi) == [
        f"a torch built with _GLIBCXX_USE_CXX11_ABI={int(abi)}"
    ]


def test_cpu_kernels_load_into_any_variant_of_their_torch_release() -> None:
    record = record_for("2.14.1+cu130", "13.0", cuda_kernels=False)
    assert _extension.mismatches(record, "2.14.1+cpu", None, record["cxx11_abi"]) == []


def test_the_install_command_names_the_torch_and_its_index() -> None:
    cuda = record_for("2.13.0+cu126", "12.6", cuda_kernels=True)
    assert _extension.torch_install_command(cuda) == (
        'pip install "torch==2.13.*" --index-url https://download.pytorch.org/whl/cu126'
    )
    cpu = record_for("2.13.0+cpu", None, cuda_kernels=False)
    assert _extension.torch_install_command(cpu) == 'pip install "torch==2.13.*"'


def test_a_wheel_for_another_torch_fails_at_import_with_the_fix(tmp_path: Path) -> None:
    """The metadata mismatch: a build record for torch 2.13 with CUDA 12.6 kernels."""
    record = record_for("2.13.0+cu126", "12.6", cuda_kernels=True)
    root = package_copy(tmp_path, record, NOT_A_LIBRARY)
    done = run_python(root, "import amc_kernels")
    assert done.returncode == 1
    release = _extension.torch_release(torch.__version__)
    last = done.stderr.strip().splitlines()
    error = next(i for i, line in enumerate(last) if line.startswith("amc_kernels._extension."))
    message = "\n".join(last[error:])
    cuda = f"CUDA {torch.version.cuda}" if torch.version.cuda else "CPU only"
    found = f"CUDA {torch.version.cuda}" if torch.version.cuda else "no CUDA"
    assert message == (
        f"amc_kernels._extension.TorchMismatchError: amc-kernels {record['amc_kernels']} was "
        f"built for torch 2.13.0+cu126 (CUDA 12.6), but this environment has torch "
        f"{torch.__version__} ({cuda}): its compiled kernels (amc_kernels._C) need torch 2.13 "
        f"and a torch built for CUDA 12.x (this one has {found}), and "
        "cannot load into this torch. Fix it in one of these ways:\n"
        '  - install the torch it was built for:  pip install "torch==2.13.*" --index-url '
        "https://download.pytorch.org/whl/cu126\n"
        f"  - install amc-kernels built for torch {release} (its version ends in .torch{release})\n"
        "  - build amc-kernels against this torch:  pip install --no-build-isolation --no-binary "
        "amc-kernels amc-kernels  (in a source checkout: pip install --no-build-isolation -e .)"
    )
    assert "undefined symbol" not in done.stderr
    assert "invalid ELF header" not in done.stderr  # checked before _C was loaded


def test_a_mismatch_of_cpu_kernels_asks_for_the_release_only() -> None:
    record = record_for("2.13.0+cu126", "12.6", cuda_kernels=False)
    message = _extension.mismatch_message(record, "2.14.1+cu130", "13.0", ["torch 2.13"])
    assert message.startswith(
        f"amc-kernels {record['amc_kernels']} was built for torch 2.13.0+cu126 (CPU kernels "
        "only), but this environment has torch 2.14.1+cu130 (CUDA 13.0): its compiled kernels "
        "(amc_kernels._C) need torch 2.13, and cannot load into this torch."
    )
    assert '  - install the torch it was built for:  pip install "torch==2.13.*"\n' in message


# --- a missing or unloadable _C ---

#: Imports amc_kernels, runs the reference (automatically, twice) and Triton, prints the
#: extension warnings.
FALLBACK = """
import warnings, torch
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    import amc_kernels
    from amc_kernels import reference
    x = torch.randn(5, 3, dtype=torch.float64)
    expected = reference.angular_distance(x, None)
    for _ in range(2):
        torch.testing.assert_close(amc_kernels.angular_distance(x), expected)
    torch.testing.assert_close(amc_kernels.angular_distance(x, backend="triton"), expected)
for warning in caught:
    if issubclass(warning.category, amc_kernels._extension.ExtensionWarning):
        print("WARNING", warning.message)
"""


def fallback_warnings(root: Path) -> list[str]:
    pytest.importorskip("triton")
    done = run_python(root, FALLBACK, TRITON_INTERPRET="1")
    assert done.returncode == 0, done.stderr
    return [line for line in done.stdout.splitlines() if line.startswith("WARNING")]


def info_of(root: Path) -> str:
    done = run_python(root, "import amc_kernels.cli as c; c.main(['info'])")
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_without_extension_the_reference_and_triton_run_after_one_warning(tmp_path: Path) -> None:
    root = package_copy(tmp_path, None, None)
    (warning,) = fallback_warnings(root)
    assert "amc_kernels._C is not built (this is a pure-Python install)" in warning
    assert "reference and triton still work" in warning
    out = info_of(root)
    assert "amc_kernels._C: unavailable: amc_kernels._C is not built" in out
    assert "build record: none" in out
    rows = [line.split() for line in out.splitlines()]
    cpu_rows = [row for row in rows if len(row) > 2 and row[1] == "cpu"]
    assert cpu_rows and all(
        row[2:4] == ["yes", "no"] and row[-1] == "reference" for row in cpu_rows
    )


def test_an_extension_that_does_not_load_warns_once(tmp_path: Path) -> None:
    root = package_copy(tmp_path, this_torch_record(), NOT_A_LIBRARY)
    (warning,) = fallback_warnings(root)
    assert "amc_kernels._C does not load (" in warning
    assert "rebuild it in the source checkout: pip install --no-build-isolation -e ." in warning
    assert "amc_kernels._C: unavailable: amc_kernels._C does not load" in info_of(root)


def test_an_extension_without_build_record_is_not_loaded(tmp_path: Path) -> None:
    root = package_copy(tmp_path, None, NOT_A_LIBRARY)
    (warning,) = fallback_warnings(root)
    assert f"amc_kernels._C has no build record ({_extension.RECORD_NAME})" in warning


# --- this build ---


@needs_extension
@pytest.mark.cpp
def test_the_build_record_describes_the_compiled_extension() -> None:
    record, info = _extension.read_record(), _extension.build_info()
    assert record is not None
    assert record["torch"].split("+")[0] == info["torch"]
    assert record["torch_release"] == _extension.torch_release(torch.__version__)
    assert record["cuda_kernels"] == info["cuda"]
    assert record["arch_list"] == info["arch_list"]
    variant = "cu" + record["torch_cuda"].replace(".", "") if info["cuda"] else "cpu"
    assert record["amc_kernels"] == (
        f"{amc_kernels.__version__}+{variant}.torch{record['torch_release']}"
    )
    try:
        distribution = importlib.metadata.distribution("amc-kernels")
    except importlib.metadata.PackageNotFoundError:
        return
    installed = distribution.read_text("WHEEL") is not None  # not a source tree's egg-info
    here = Path(distribution.locate_file("amc_kernels/__init__.py")).resolve()
    if installed and here == PACKAGE / "__init__.py":
        assert distribution.version == record["amc_kernels"]  # an installed wheel


@needs_extension
@pytest.mark.cpp
def test_the_extension_uses_only_the_python_limited_api() -> None:
    """_C.abi3.so imports no CPython symbol outside the stable ABI and does not link
    libtorch_python, which exists once per CPython version."""
    (library,) = _extension.extension_files()
    assert library.name.endswith(".abi3.so")
    info = _elf.read_dynamic_info(library)
    python_symbols = {name for name in info.undefined if name.startswith(("Py", "_Py"))}
    # Each must be in https://docs.python.org/3/c-api/stable.html#stable-abi-list before it
    # is added here.
    assert python_symbols <= {"PyModule_Create2"}
    assert not any(name.startswith("libtorch_python") for name in info.needed)
    assert not any(name.startswith("libpython") for name in info.needed)
