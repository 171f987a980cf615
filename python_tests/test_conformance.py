"""Conformance: every backend of every op against the contract
(docs/design.md#3-backends-and-dispatch, §7).

Parametrised over op × backend × device × sample variant × dtype, read off the op specs
(``amc_kernels._spec.SPECS``), the implementation table (``_dispatch.IMPLEMENTATIONS``) and the
sample variants of ``amc_kernels.testing``: a backend entered in the table is checked here
without a line of test code. A test skips only when ``_dispatch.refusals`` refuses the call
(metadata: device, build, interpreter), with the reasons as the message; any exception fails.

- values and gradients against the reference, under the low-precision rule (§7);
- empty batches, non-contiguous inputs (a generic strided view of every tensor) and the
  output_mask protocol (a gradient requested alone equals the same gradient requested with all);
- gradcheck in float64 on CPU; double backward (the reference: gradgradcheck; compiled
  backends: a clear error);
- torch.library.opcheck of the ops the backend registered, its backward's output_mask, and
  the schema family (every compiled backend's ops have the C++ schemas modulo the name);
- torch.compile(fullgraph=True) over the public function.

The op-specific checks (closed forms, oracles, special vectors, ties, tilings and thread
splits) stay in python_tests/test_<op>.py.
"""

from __future__ import annotations

import importlib
import importlib.util

import pytest
import torch
from torch.library import opcheck

from amc_kernels import _dispatch, _extension, testing
from amc_kernels._spec import OPS, SPECS
from amc_kernels.testing import Arguments

DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
#: The Triton interpreter runs fp32 and fp64; fp16 and bf16 run on CUDA (as the triton sections).
INTERPRETER_DTYPES = (torch.float32, torch.float64)
#: The devices each backend runs on; a backend not named here is tried on both.
BACKEND_DEVICES = {
    "reference": ("cpu",),
    "cpp": ("cpu",),
    "cuda": ("cuda",),
    "triton": ("cpu", "cuda"),
}
LAYOUTS = ("strided", "transposed", "channels-last")
#: The option combinations of each op's kernels: the samples of opcheck (which is slow).
KERNEL_VARIANTS = {
    "angular_distance": ("x-y", "y=None", "D=0-x-y"),
    "amc_loss": ("n7-all-mean", "n7-all-none", "n7-halves-none"),
    "supcon_loss": (
        "odd-all-labels-mean",
        "one-view-one-simclr-none",
        "raw-one-simclr-mean",
        "2d-all-simclr",
    ),
    "gradcam": (
        "odd-mean-plain",
        "odd-mean-max-up",
        "odd-elem-minmax-down",
        "odd-elem-sum-skewed",
        "wide-mean-sum-same",
    ),
    "class_activation_map": ("odd", "1x1x1x1", "wide"),
    "cgc_loss": ("b5-3x5-s37", "edge-crops-3x5-s16", "b33-4x6-s24", "tensor-temperature-4x5-s20"),
    "saliency_mask": ("up-odd-th-0.5", "up-odd-top-0.15", "large-top-0.3"),
}
#: Under the Triton interpreter, the samples of opcheck and of the layout, output_mask,
#: empty-batch and gradient checks (the triton sections of test_<op>.py cover more there).
INTERPRETED_VARIANTS = {
    "angular_distance": ("x-y", "y=None", "D=0-x-y"),
    "amc_loss": ("n7-all-mean", "n7-halves-none"),
    "supcon_loss": ("odd-all-labels-mean", "raw-one-simclr-mean", "2d-all-simclr"),
    "gradcam": ("odd-mean-max-up", "odd-elem-minmax-down"),
    "class_activation_map": ("odd", "wide"),
    "cgc_loss": ("b5-3x5-s37", "tensor-temperature-4x5-s20"),
    "saliency_mask": ("up-odd-th-0.5",),
}
COMPILE_VARIANTS = {
    "angular_distance": ("x-y", "y=None"),
    "amc_loss": ("n7-all-none", "n7-halves-mean"),
    "supcon_loss": ("odd-all-labels-mean", "one-view-one-simclr-none"),
    "gradcam": ("odd-elem-sum-skewed", "odd-mean-max-up"),
    "class_activation_map": ("odd",),
    "cgc_loss": ("b5-3x5-s37", "tensor-temperature-4x5-s20"),
    "saliency_mask": ("up-odd-top-0.15",),
}


def _dtype_id(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def targets() -> list[tuple[str, str, str]]:
    """(op, backend, device) for every implementation in the table."""
    return [
        (op, backend, device)
        for op in OPS
        for backend in _dispatch.IMPLEMENTATIONS[op]
        for device in BACKEND_DEVICES.get(backend, ("cpu", "cuda"))
    ]


def _marks(backend: str, device: str) -> list[pytest.MarkDecorator]:
    marks = [pytest.mark.cuda] if device == "cuda" else []
    if backend in ("cpp", "triton"):
        marks.append(getattr(pytest.mark, backend))
    return marks


def _params(
    *,
    variants: bool = True,
    dtypes: tuple[torch.dtype, ...] | None = None,
    where=lambda op, backend, device: True,
    names: dict[str, tuple[str, ...]] | None = None,
    interpreted_names: dict[str, tuple[str, ...]] | None = None,
    extra=None,
) -> list:
    """pytest params (op, backend, device[, variant][, dtype][, extra]) with readable ids:
    every sample variant, or those in `names` (`interpreted_names` under the interpreter)."""
    params = []
    for op, backend, device in targets():
        if not where(op, backend, device):
            continue
        subset = names
        if interpreted_names is not None and testing.interpreted(backend, device):
            subset = interpreted_names
        if not variants:
            chosen = [None]
        elif subset is not None:
            chosen = list(subset.get(op, ()))
        else:
            chosen = [v.name for v in testing.variants(op)]
        for name in chosen:
            allowed = dtypes
            if allowed is not None and testing.interpreted(backend, device):
                allowed = tuple(d for d in allowed if d in INTERPRETER_DTYPES)
            for dtype in allowed or [None]:
                for value in extra(op, name) if extra else [None]:
                    values = [op, backend, device, name, dtype, value]
                    keep = [variants, dtypes is not None, extra is not None]
                    values = values[:3] + [v for v, k in zip(values[3:], keep, strict=True) if k]
                    ident = "-".join(
                        _dtype_id(v) if isinstance(v, torch.dtype) else str(v) for v in values
                    )
                    params.append(pytest.param(*values, id=ident, marks=_marks(backend, device)))
    return params


def prepare(
    op: str,
    backend: str,
    device: str,
    name: str = "default",
    dtype: torch.dtype = torch.float64,
    *,
    batch: int | None = None,
) -> Arguments:
    """The sample's arguments for this backend; skips (with the reasons) if dispatch refuses."""
    arguments = testing.make_inputs(
        op,
        device,
        dtype,
        variant_name=name,
        batch=batch,
        small=testing.interpreted(backend, device),
    )
    reasons = _dispatch.refusals(backend, testing.dispatch_call(op, arguments))
    if reasons:
        pytest.skip(f"{backend} refuses {op} on {device}: " + "; ".join(reasons))
    return arguments


def assert_same(got: list[torch.Tensor], expected: list[torch.Tensor], what: str) -> None:
    """Equal up to fp64 round-off (rtol 1e-12, relative to the largest entry)."""
    assert len(got) == len(expected), what
    for index, (g, e) in enumerate(zip(got, expected, strict=True)):
        assert g.shape == e.shape and g.dtype == e.dtype, (what, index, g.shape, e.shape)
        if not e.is_floating_point():
            assert torch.equal(g, e), (what, index)
            continue
        scale = 1.0 + (e.abs().max().item() if e.numel() else 0.0)
        torch.testing.assert_close(
            g, e, rtol=1e-12, atol=1e-12 * scale, equal_nan=True, msg=lambda m: f"{what}: {m}"
        )


def differentiable(op: str, backend: str, device: str) -> bool:
    return bool(SPECS[op].differentiable)


def on_cpu(op: str, backend: str, device: str) -> bool:
    return device == "cpu"


def compiled(op: str, backend: str, device: str) -> bool:
    return testing.library_ops(op, backend) is not None


# --- the reference: closed forms ---


@pytest.mark.parametrize(
    "case", testing.closed_form_cases(), ids=lambda c: f"{c.op}-{c.name.replace(' ', '_')}"
)
@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)])
def test_reference_closed_form(case: testing.ClosedForm, device: str) -> None:
    got, expected = case.run(torch.device(device))
    assert got.device.type == device and got.dtype == torch.float64
    torch.testing.assert_close(got.cpu(), expected.cpu(), rtol=0, atol=1e-12)


# --- dispatch: an explicit backend that cannot run says why ---


@pytest.mark.parametrize("op", OPS)
def test_triton_on_cpu_without_interpreter_is_refused(
    op: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    arguments = testing.make_inputs(op)
    with pytest.raises(_dispatch.BackendUnavailableError, match="triton") as info:
        testing.call(op, "triton", arguments)
    message = str(info.value)
    assert message.startswith(f"{op}: ") and "Candidates" in message
    assert "reference: usable" in message


# --- values and gradients against the reference ---


@pytest.mark.parametrize(("op", "backend", "device", "name", "dtype"), _params(dtypes=DTYPES))
def test_matches_reference(op: str, backend: str, device: str, name: str, dtype) -> None:
    arguments = prepare(op, backend, device, name, dtype)
    ok, error, bound = testing.compare_backend(op, backend, arguments)
    assert ok, f"{backend} error {error:.3g} above the bound {bound:.3g}"


@pytest.mark.parametrize(
    ("op", "backend", "device", "name", "dtype"),
    _params(dtypes=DTYPES, interpreted_names=INTERPRETED_VARIANTS),
)
def test_empty_batch(op: str, backend: str, device: str, name: str, dtype) -> None:
    arguments = prepare(op, backend, device, name, dtype, batch=0)
    ok, error, bound = testing.compare_backend(op, backend, arguments)
    assert ok, f"{backend} error {error:.3g} above the bound {bound:.3g}"
    outputs, grads = testing.run_with_grads(op, backend, arguments)
    for out in outputs:  # a zero loss, or an empty output
        assert out.numel() == 0 or bool((out == 0).all()), out
    wrt = testing.differentiable_inputs(op, arguments)
    for input_name, grad in zip(wrt, grads, strict=True):
        assert grad.shape == arguments[input_name].shape, (input_name, grad.shape)
        assert grad.dtype == arguments[input_name].dtype, (input_name, grad.dtype)
        assert not bool(grad.any()), input_name


# --- layouts and the output_mask protocol ---


@pytest.mark.parametrize(
    ("op", "backend", "device", "name", "layout"),
    _params(extra=lambda op, name: LAYOUTS, interpreted_names=INTERPRETED_VARIANTS),
)
def test_non_contiguous_inputs(op: str, backend: str, device: str, name: str, layout: str) -> None:
    arguments = prepare(op, backend, device, name)
    strided = testing.non_contiguous(arguments, layout)
    for key, value in strided.items():
        if _can_be_non_contiguous(value, layout):
            assert not value.is_contiguous(), key
    got = testing.run_with_grads(op, backend, strided)
    expected = testing.run_with_grads(op, backend, arguments)
    assert_same([*got[0], *got[1]], [*expected[0], *expected[1]], f"{layout} inputs")
    if SPECS[op].differentiable:  # an expanded (stride 0) upstream gradient too
        got = testing.run_with_grads(op, backend, strided, projection="sum")[1]
        expected = testing.run_with_grads(op, backend, arguments, projection="sum")[1]
        assert_same(got, expected, "out.sum() backward")


def _can_be_non_contiguous(value: object, layout: str) -> bool:
    """Whether testing.strided_view(value, layout) can have strides of its own."""
    if not isinstance(value, torch.Tensor) or value.dim() == 0 or value.numel() == 0:
        return False  # a 0-d tensor (a learnable temperature) has no strides of its own
    if layout == "transposed" and value.dim() >= 2:
        return value.shape[-1] > 1 and value.shape[-2] > 1
    if layout == "channels-last" and value.dim() >= 3:
        return value.shape[1] > 1 and value[0, 0].numel() > 1
    return value.shape[-1] > 1


def _requests(op: str, name: str) -> list[str]:
    """Each differentiable input requested alone (when there are several), and none at all."""
    present = testing.differentiable_inputs(op, testing.make_inputs(op, variant_name=name))
    return (present if len(present) > 1 else []) + ["none"]


@pytest.mark.parametrize(
    ("op", "backend", "device", "name", "requested"),
    _params(where=differentiable, extra=_requests, interpreted_names=INTERPRETED_VARIANTS),
)
def test_output_mask(op: str, backend: str, device: str, name: str, requested: str) -> None:
    arguments = prepare(op, backend, device, name)
    outputs, grads = testing.run_with_grads(op, backend, arguments)
    if requested == "none":
        result = testing.call(op, backend, arguments)
        results = list(result) if SPECS[op].results > 1 else [result]
        assert not any(r.requires_grad for r in results)
        assert_same([r.detach() for r in results], outputs, "no gradient requested")
        return
    alone_outputs, alone = testing.run_with_grads(op, backend, arguments, wrt=[requested])
    position = testing.differentiable_inputs(op, arguments).index(requested)
    assert_same(alone_outputs, outputs, f"outputs with only {requested} requested")
    assert_same(alone, [grads[position]], f"the gradient of {requested} requested alone")


# --- gradients: gradcheck and double backward ---


@pytest.mark.parametrize(
    ("op", "backend", "device", "name"),
    _params(where=on_cpu, interpreted_names=INTERPRETED_VARIANTS),
)
def test_gradcheck(op: str, backend: str, device: str, name: str) -> None:
    arguments = prepare(op, backend, device, name)
    wrt = testing.differentiable_inputs(op, arguments)
    if not SPECS[op].differentiable:  # saliency_mask: no gradient, whatever the inputs want
        floats = {k: v.requires_grad_() for k, v in arguments.items() if _is_float(v)}
        results = testing.call(op, backend, arguments | floats)
        assert not any(r.requires_grad for r in results)
        return
    fixed = {k: v for k, v in arguments.items() if k not in wrt}

    def fn(*tensors: torch.Tensor) -> torch.Tensor:
        return testing.call(op, backend, fixed | dict(zip(wrt, tensors, strict=True)))

    # full Jacobians on small samples; one random direction beyond a tile and when interpreted
    fast = testing.variant(op, name).large or testing.interpreted(backend, device)
    leaves = [arguments[k].detach().clone().requires_grad_() for k in wrt]
    assert torch.autograd.gradcheck(fn, leaves, fast_mode=fast)


def _is_float(value: object) -> bool:
    return isinstance(value, torch.Tensor) and value.is_floating_point()


@pytest.mark.parametrize(("op", "backend", "device"), _params(variants=False, where=differentiable))
def test_double_backward(op: str, backend: str, device: str) -> None:
    arguments = prepare(op, backend, device, batch=2)
    wrt = testing.differentiable_inputs(op, arguments)
    leaves = [arguments[k].detach().clone().requires_grad_() for k in wrt]
    fixed = {k: v for k, v in arguments.items() if k not in wrt}

    def fn(*tensors: torch.Tensor) -> torch.Tensor:
        return testing.call(op, backend, fixed | dict(zip(wrt, tensors, strict=True)))

    names = testing.library_ops(op, backend)
    if names is None:  # the reference is differentiable twice
        assert torch.autograd.gradgradcheck(fn, leaves, fast_mode=True)
        return
    out = fn(*leaves)
    weights = torch.linspace(-1.0, 1.0, out.numel(), dtype=out.dtype, device=out.device)
    grads = torch.autograd.grad((out.flatten() * weights).sum(), leaves, create_graph=True)
    total = sum(g.sum() for g in grads if g.requires_grad)
    with pytest.raises(RuntimeError, match=f"double backward is not supported.*{names[1]}"):
        torch.autograd.grad(total, leaves, allow_unused=True)


# --- the registered ops: opcheck, output_mask, schemas ---


def _opcheck_utils(backend: str, device: str) -> tuple[str, ...] | None:
    # Under the interpreter the fake-tensor checks would launch the interpreted kernel on fake
    # tensors: CPU runs the schema and autograd checks (as the triton sections).
    if testing.interpreted(backend, device):
        return ("test_schema", "test_autograd_registration")
    return None


@pytest.mark.parametrize(
    ("op", "backend", "device", "name"),
    _params(where=compiled, names=KERNEL_VARIANTS, interpreted_names=INTERPRETED_VARIANTS),
)
def test_opcheck(op: str, backend: str, device: str, name: str) -> None:
    arguments = prepare(op, backend, device, name, torch.float32)
    spec, (fwd, bwd) = SPECS[op], testing.library_ops(op, backend)
    utils = _opcheck_utils(backend, device)
    kwargs = {} if utils is None else {"test_utils": utils}
    wrt = testing.differentiable_inputs(op, arguments)
    leaves = arguments | {k: arguments[k].detach().clone().requires_grad_() for k in wrt}
    forward = testing.forward_arguments(op, leaves)
    opcheck(testing.library_op(fwd).default, forward, **kwargs)
    if bwd is None:
        return
    detached = [t.detach() if isinstance(t, torch.Tensor) else t for t in forward]
    outputs = testing.library_op(fwd)(*detached)
    outputs = list(outputs) if isinstance(outputs, tuple | list) else [outputs]
    grad = torch.randn(outputs[0].shape, dtype=outputs[0].dtype, device=outputs[0].device)
    positions = [spec.differentiable.index(k) for k in wrt]
    masks = [[i in positions for i in range(len(spec.differentiable))]]
    masks += [[i == p for i in range(len(spec.differentiable))] for p in positions]
    for mask in masks:
        backward = testing.backward_arguments(op, bwd, detached, outputs, grad, mask)
        opcheck(testing.library_op(bwd).default, backward, **kwargs)
        grads = testing.library_op(bwd)(*backward)
        grads = list(grads) if isinstance(grads, tuple | list) else [grads]
        assert len(grads) == len(spec.differentiable), (bwd, len(grads))
        for input_name, needed, gradient in zip(spec.differentiable, mask, grads, strict=True):
            if needed:  # computed: broadcastable to its input
                torch.broadcast_shapes(gradient.shape, arguments[input_name].shape)
            else:  # not requested: not computed, an empty [0]
                assert gradient.shape == (0,), (bwd, input_name, mask, gradient.shape)


def _own_names(op: str, backend: str, device: str) -> bool:
    names = testing.library_ops(op, backend)
    return names is not None and names != testing.library_ops(op, "cpp") and device == "cpu"


@pytest.mark.parametrize(
    ("op", "backend"), [p.values[:2] for p in _params(variants=False, where=_own_names)]
)
def test_schema_family(op: str, backend: str) -> None:
    """The backend's ops have the C++ ops' schemas, modulo the name."""
    if _extension.load_error() is not None:
        pytest.skip(_extension.load_error())
    if backend == "triton" and importlib.util.find_spec("triton") is None:
        pytest.skip("triton is not installed")
    importlib.import_module(_dispatch.IMPLEMENTATIONS[op][backend])
    importlib.import_module(_dispatch.IMPLEMENTATIONS[op]["cpp"])
    for own, cpp in zip(
        testing.library_ops(op, backend), testing.library_ops(op, "cpp"), strict=True
    ):
        if cpp is None:
            continue
        got = testing.schema(own).replace(f"amc_kernels::{own}(", "(", 1)
        assert got == testing.schema(cpp).replace(f"amc_kernels::{cpp}(", "(", 1), own


# --- torch.compile over the public function ---


def _compiles(op: str, backend: str, device: str) -> bool:
    # cpp on CPU (aot_eager, as the cpp sections did), the GPU backends on CUDA
    return compiled(op, backend, device) and not testing.interpreted(backend, device)


@pytest.mark.parametrize(
    ("op", "backend", "device", "name"), _params(where=_compiles, names=COMPILE_VARIANTS)
)
def test_torch_compile_fullgraph(op: str, backend: str, device: str, name: str) -> None:
    arguments = prepare(op, backend, device, name, torch.float32)
    wrt = testing.differentiable_inputs(op, arguments)
    fixed = {k: v for k, v in arguments.items() if k not in wrt}

    def fn(*tensors: torch.Tensor):
        return testing.call(op, backend, fixed | dict(zip(wrt, tensors, strict=True)))

    torch._dynamo.reset()  # every sample compiles afresh (static shapes), whatever ran before
    compiled_fn = torch.compile(
        fn, fullgraph=True, backend="aot_eager" if device == "cpu" else "inductor"
    )
    results = []
    for function in (compiled_fn, fn):
        leaves = [arguments[k].detach().clone().requires_grad_() for k in wrt]
        out = function(*leaves)
        outputs = list(out) if isinstance(out, tuple | list) else [out]
        grads = []
        if wrt:
            weights = torch.linspace(-1.0, 1.0, out.numel(), dtype=out.dtype, device=out.device)
            grads = list(torch.autograd.grad((out.flatten() * weights).sum(), leaves))
        results.append([o.detach() for o in outputs] + grads)
    got, expected = results
    for g, e in zip(got, expected, strict=True):
        torch.testing.assert_close(g, e)
