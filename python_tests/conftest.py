"""Shared fixtures and marker handling. Nothing here touches a GPU at import."""

from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():
    # The Triton kernels run on CPU under the interpreter; it must be on before they are defined.
    os.environ.setdefault("TRITON_INTERPRET", "1")

from amc_kernels import _extension

needs_cpp = pytest.mark.skipif(not _extension.available(), reason="amc_kernels._C is not built")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip_cuda = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip_cuda)


@pytest.fixture(autouse=True)
def _no_backend_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests start from automatic dispatch, whatever the caller's environment says."""
    monkeypatch.delenv("AMC_KERNELS_BACKEND", raising=False)
    monkeypatch.delenv("AMC_KERNELS_LOG_DISPATCH", raising=False)
    monkeypatch.delenv("AMC_KERNELS_CHECK_VALUES", raising=False)


DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)]


@pytest.fixture(params=DEVICES)
def device(request: pytest.FixtureRequest) -> torch.device:
    return torch.device(request.param)


@pytest.fixture(params=["cpu", pytest.param("cuda", marks=pytest.mark.cuda)])
def triton_device(request: pytest.FixtureRequest) -> torch.device:
    """CPU under the Triton interpreter (the default without a GPU), or CUDA."""
    pytest.importorskip("triton")
    if request.param == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("Triton runs on CPU tensors only under TRITON_INTERPRET=1")
    return torch.device(request.param)


ALL_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
DTYPE_IDS = [pytest.param(dt, id=str(dt).split(".")[-1]) for dt in ALL_DTYPES]
#: The dtypes the Triton backend runs under the interpreter, and with them fp16 and bf16 on GPUs.
EXACT_DTYPES = DTYPE_IDS[2:]  # float32, float64
TRITON_DTYPES = [
    *EXACT_DTYPES,
    *[pytest.param(*p.values, id=p.id, marks=pytest.mark.cuda) for p in DTYPE_IDS[:2]],
]


def triton_dtypes_and_sizes(options: dict | None = None):
    """A Triton test parametrized by "dtype" over TRITON_DTYPES, "size" over "one" (a single
    element), "odd" (odd sizes) and "beyond_tile" (more than one tile: a smaller one under the
    interpreter), and "options" over the values of `options` (ids: its keys) where given."""

    def decorate(test):
        if options is not None:
            values, ids = list(options.values()), list(options)
            test = pytest.mark.parametrize("options", values, ids=ids)(test)
        test = pytest.mark.parametrize("size", ["one", "odd", "beyond_tile"])(test)
        return pytest.mark.triton(pytest.mark.parametrize("dtype", TRITON_DTYPES)(test))

    return decorate


def cpp_at_the_clamp_bounds(test):
    """A cpp test (marked cpp, skipped without amc_kernels._C) parametrized by "dtype" over
    float32 and float64, and "sign" over the clamp bounds 1 − δ and −1 + δ of the cosine."""
    test = pytest.mark.parametrize("sign", [1.0, -1.0], ids=["at 1-δ", "at -1+δ"])(test)
    test = pytest.mark.parametrize("dtype", EXACT_DTYPES)(test)
    return pytest.mark.cpp(needs_cpp(test))


#: The gradient of a zero row in fp16 (amc_loss, angular_distance, supcon_loss).
ZERO_FP16 = pytest.mark.xfail(
    strict=True,
    reason="d(x / max(‖x‖, 1e-12))/dx at x = 0 is I·1e12, above the fp16 maximum 65504: the "
    "gradient of a zero row cannot be finite in fp16 under the DESIGN's eps (reported)",
)


def kind_and_dtype(kinds: object, zero_fp16: pytest.MarkDecorator | None = None):
    """parametrize("kind", "dtype") over sorted(kinds) × ALL_DTYPES, ids "kind-dtype"; the case
    ("zero", float16) carries the mark `zero_fp16` where one is given (ZERO_FP16)."""
    params = []
    for kind in sorted(kinds):
        for dtype in DTYPE_IDS:
            (dt,) = dtype.values
            marks = zero_fp16 if zero_fp16 and (kind, dt) == ("zero", torch.float16) else ()
            params.append(pytest.param(kind, dt, id=f"{kind}-{dtype.id}", marks=marks))
    return pytest.mark.parametrize(("kind", "dtype"), params)


def f64(values: object, device: torch.device | str = "cpu") -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64, device=device)


def longs(values: object) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.long)


def rand(*shape: int, seed: int = 0, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Seeded N(0, 1) values, drawn in fp64 and cast to `dtype`."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=gen, dtype=torch.float64).to(dtype)


def rand_labels(n: int, classes: int, seed: int = 0) -> torch.Tensor:
    """Seeded integer labels (or targets) in [0, classes)."""
    gen = torch.Generator().manual_seed(seed + 7919)
    return torch.randint(classes, (n,), generator=gen)


def intercept_dispatch(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, dict]]:
    """Every call dispatched from now on returns "passed" instead of running a backend; the
    returned list records (op, options) of each call, as the dispatcher saw them."""
    from amc_kernels import _dispatch

    calls: list[tuple[str, dict]] = []

    def select(call: _dispatch.Call, backend: str | None = None) -> _dispatch.Implementation:
        calls.append((call.op, call.options))
        return _dispatch.Implementation(
            call.op, "intercepted", lambda **_: "passed", _dispatch.accept_all
        )

    monkeypatch.setattr(_dispatch, "select", select)
    return calls
