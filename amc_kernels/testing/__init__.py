"""Test helpers shared by python_tests/ and ``amc-kernels check``, read off the op specs.

* :func:`closed_form_cases`: tiny inputs whose exact results are written out by hand.
* :func:`make_inputs`: seeded random arguments of an op, by name (every tensor and option of
  its :class:`~amc_kernels._spec.OpSpec`), on any device and dtype, for any batch (0 included),
  in one of the op's named sample variants (:func:`variants`): the option combinations and
  shapes, larger than one tile, that every backend must reproduce (like torchvision's
  RoIOpTester or OpInfo's sample inputs).
* :func:`compare_backend`: a backend against the reference, forward and gradients, under the
  low-precision rule of docs/design.md#7-tests: its error against the fp64 reference is at most
  twice the error of the same-dtype reference, plus a floor. Keep masks (saliency_mask) must
  agree except within round-off of the decision boundary.
* :func:`dispatch_call`, :func:`library_ops`, :func:`forward_arguments`,
  :func:`backward_arguments`, :func:`non_contiguous`: the pieces of the conformance suite
  (python_tests/test_conformance.py) that follow from the contract.

The modules: ``closed_forms``, ``variants`` (and :func:`make_inputs`), ``compare`` (running an
op and the tolerance rule), ``contract`` (library ops, schemas, strided layouts).
"""

from .._register import library_op
from .._spec import Arguments
from .closed_forms import ClosedForm, closed_form_cases
from .compare import (
    FLOOR,
    MASK_NEAR,
    as_arguments,
    call,
    compare_backend,
    compare_masks,
    differentiable_inputs,
    dispatch_call,
    run_with_grads,
    within_reference_error,
)
from .contract import (
    backward_arguments,
    forward_arguments,
    library_ops,
    non_contiguous,
    schema,
    strided_view,
)
from .variants import (
    GRADCAM_OPTIONS,
    INTERPRETER_BATCH,
    INTERPRETER_FRAME,
    VARIANTS,
    Draw,
    Variant,
    cgc_edge_crops,
    interpreted,
    make_inputs,
    variant,
    variants,
)

__all__ = [
    "FLOOR",
    "GRADCAM_OPTIONS",
    "INTERPRETER_BATCH",
    "INTERPRETER_FRAME",
    "MASK_NEAR",
    "VARIANTS",
    "Arguments",
    "ClosedForm",
    "Draw",
    "Variant",
    "as_arguments",
    "backward_arguments",
    "call",
    "cgc_edge_crops",
    "closed_form_cases",
    "compare_backend",
    "compare_masks",
    "differentiable_inputs",
    "dispatch_call",
    "forward_arguments",
    "interpreted",
    "library_op",
    "library_ops",
    "make_inputs",
    "non_contiguous",
    "run_with_grads",
    "schema",
    "strided_view",
    "variant",
    "variants",
    "within_reference_error",
]
