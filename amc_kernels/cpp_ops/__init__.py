"""The compiled ops of amc_kernels._C as the cpp (CPU tensors) and cuda (CUDA tensors) backends.

One module per op: the fake (meta) kernels of torch.ops.amc_kernels.<op>_fwd/_bwd and their
registration through :mod:`amc_kernels._register`. The dispatcher imports a module on first use
(amc_kernels._dispatch.IMPLEMENTATIONS); selfcheck is the build's self-check op.
"""
