"""The triton backend: one module per op, imported on first use by amc_kernels._dispatch.

Each op module defines ``torch.ops.amc_kernels.<op>_triton_fwd`` / ``<op>_triton_bwd`` with the
schemas of the C++ ``<op>_fwd`` / ``<op>_bwd`` (the protocol of :mod:`amc_kernels._register`),
registers their autograd through :func:`amc_kernels._register.register_autograd`, and exposes
``<op>``, the function the dispatcher calls with the spec's arguments by keyword. Shared pieces:
``_common`` (op definition, launches), ``_tiles`` (pairwise tiles), ``_math`` (scalar math),
``_interp`` (bilinear taps), ``_maps`` (map kernels of gradcam and class_activation_map) and
``_cgc_kernels``.
"""
