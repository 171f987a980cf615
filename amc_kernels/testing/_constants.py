"""The names every test helper module shares: the argument dict, tolerances and sizes."""

from __future__ import annotations

from typing import Any

import torch

from .._spec import OPS, SPECS

Arguments = dict[str, Any]

#: Ops whose outputs have a gradient (saliency_mask has none).
DIFFERENTIABLE = tuple(op for op in OPS if SPECS[op].differentiable)
#: Absolute floors of the low-precision rule, per compute dtype of the inputs.
FLOOR = {torch.float64: 1e-10, torch.float32: 1e-5, torch.float16: 1e-3, torch.bfloat16: 1e-2}
#: The largest default batch of a sample under the Triton interpreter.
INTERPRETER_BATCH = 4
#: The largest cgc_loss frame (size) of a sample under the Triton interpreter.
INTERPRETER_FRAME = 12
#: |e − boundary| under which a backend's keep decision may follow its own rounding.
MASK_NEAR = 1e-5
