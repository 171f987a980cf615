"""The compiled extension amc_kernels._C: its build record, checked before it is loaded, its
loading, and the build information compiled into it (docs/design.md#8-build-and-wheels).

The build writes ``_build_info.json`` beside ``_C``: the torch it was compiled against, that
torch's CUDA version and C++ ABI, and whether ``_C`` holds CUDA kernels. ``import amc_kernels``
compares the record with the running torch first (:func:`check_build`): a ``_C`` built for
another torch release would fail with an undefined symbol such as ``_ZN3c10…``, or worse load
and misbehave, so it raises :class:`TorchMismatchError` with the fix instead. A missing record,
a missing ``_C`` or one that does not load leaves the reference and Triton backends working: one
warning, and :func:`load_error` (shown by ``amc-kernels info``) says why.
"""

from __future__ import annotations

import functools
import importlib.machinery
import json
import warnings
from pathlib import Path

import torch

PACKAGE_DIR = Path(__file__).resolve().parent
RECORD_NAME = "_build_info.json"
REBUILD = "pip install --no-build-isolation -e ."


class TorchMismatchError(ImportError):
    """amc_kernels._C was built for another torch than the one installed."""


class ExtensionWarning(UserWarning):
    """amc_kernels._C is missing or does not load; only the reference and Triton backends run."""


def extension_files() -> list[Path]:
    """The files `import amc_kernels._C` could load, in this package's folder."""
    return [
        PACKAGE_DIR / f"_C{suffix}"
        for suffix in importlib.machinery.EXTENSION_SUFFIXES
        if (PACKAGE_DIR / f"_C{suffix}").is_file()
    ]


def read_record() -> dict | None:
    """The build record beside _C, or None when there is none."""
    path = PACKAGE_DIR / RECORD_NAME
    return json.loads(path.read_text()) if path.is_file() else None


def torch_release(version: str) -> str:
    """'2.14.1+cu130' -> '2.14'. torch's C++ ABI changes between releases, not patches."""
    return ".".join(version.split("+")[0].split(".")[:2])


def _cuda_major(version: str | None) -> str | None:
    return version.split(".")[0] if version else None


def mismatches(record: dict, version: str, cuda: str | None, cxx11_abi: bool) -> list[str]:
    """What _C needs, per `record`, that the torch (version, torch.version.cuda, C++11 ABI flag)
    lacks; empty when _C can load into it."""
    reasons = []
    if torch_release(version) != record["torch_release"]:
        reasons.append(f"torch {record['torch_release']}")
    if record["cuda_kernels"] and _cuda_major(cuda) != _cuda_major(record["torch_cuda"]):
        found = f"CUDA {cuda}" if cuda else "no CUDA"
        reasons.append(
            f"a torch built for CUDA {_cuda_major(record['torch_cuda'])}.x (this one has {found})"
        )
    if bool(record["cxx11_abi"]) != cxx11_abi:
        reasons.append(f"a torch built with _GLIBCXX_USE_CXX11_ABI={int(record['cxx11_abi'])}")
    return reasons


def torch_install_command(record: dict) -> str:
    """The pip command that installs the torch `record` was built for."""
    spec = f'pip install "torch=={record["torch_release"]}.*"'
    if not record["cuda_kernels"]:
        return spec
    variant = "cu" + record["torch_cuda"].replace(".", "")
    return f"{spec} --index-url https://download.pytorch.org/whl/{variant}"


def _describe_torch(version: str, cuda: str | None) -> str:
    return f"torch {version} ({f'CUDA {cuda}' if cuda else 'CPU only'})"


def mismatch_message(record: dict, version: str, cuda: str | None, reasons: list[str]) -> str:
    built = (
        _describe_torch(record["torch"], record["torch_cuda"])
        if record["cuda_kernels"]
        else f"torch {record['torch']} (CPU kernels only)"
    )
    return (
        f"amc-kernels {record['amc_kernels']} was built for {built}, but this environment has "
        f"{_describe_torch(version, cuda)}: its compiled kernels (amc_kernels._C) need "
        f"{' and '.join(reasons)}, and cannot load into this torch. Fix it in one of these ways:\n"
        f"  - install the torch it was built for:  {torch_install_command(record)}\n"
        f"  - install amc-kernels built for torch {torch_release(version)} (its version ends in "
        f".torch{torch_release(version)})\n"
        f"  - build amc-kernels against this torch:  pip install --no-build-isolation "
        f"--no-binary amc-kernels amc-kernels  (in a source checkout: {REBUILD})"
    )


def check_build() -> None:
    """Raise TorchMismatchError when the build record says _C cannot load into this torch."""
    record = read_record()
    if record is None or not extension_files():
        return
    version, cuda = torch.__version__, torch.version.cuda
    reasons = mismatches(record, version, cuda, bool(torch._C._GLIBCXX_USE_CXX11_ABI))
    if reasons:
        raise TorchMismatchError(mismatch_message(record, version, cuda, reasons))


def _load() -> str | None:
    if not extension_files():
        return (
            "amc_kernels._C is not built (this is a pure-Python install); reinstall a wheel "
            f"built for torch {torch_release(torch.__version__)}, or build it in a source "
            f"checkout: {REBUILD}"
        )
    if read_record() is None:
        return (
            f"amc_kernels._C has no build record ({RECORD_NAME}), so it cannot be checked "
            f"against this torch before loading; rebuild it in the source checkout: {REBUILD}"
        )
    try:
        from . import _C  # noqa: F401  (importing registers the torch.ops.amc_kernels ops)
    except (ImportError, OSError) as error:
        return (
            f"amc_kernels._C does not load ({error}); reinstall amc-kernels, or rebuild it in "
            f"the source checkout: {REBUILD}"
        )
    from .cpp_ops import selfcheck  # noqa: F401  (the self-check op's fake kernel)

    return None


@functools.cache
def _load_once() -> str | None:
    error = _load()
    if error is not None:
        warnings.warn(
            f"{error}. The cpp and cuda backends are off; reference and triton still work.",
            ExtensionWarning,
            stacklevel=3,
        )
    return error


@torch.compiler.assume_constant_result  # reads files: torch.compile(fullgraph=True) folds it
def load_error() -> str | None:
    """None when amc_kernels._C loaded; otherwise why it did not (warned about once)."""
    return _load_once()


def available() -> bool:
    return load_error() is None


def build_info() -> dict | None:
    """The build configuration compiled into amc_kernels._C, or None when it is not loaded."""
    if not available():
        return None
    return json.loads(torch.ops.amc_kernels.build_info())
