"""Launch grids stay within CUDA's limits for large volumes.

CUDA allows up to 2^31 - 1 programs along grid axis 0 but only 65535 along axes 1
and 2, and Triton's interpreter enforces neither. So the launchers of every op
(forward and backward) run here for a volume with more than 65535 spatial tiles,
with each kernel replaced by a recorder of its grid; nothing is computed.
"""

from __future__ import annotations

import torch

from mmscale.ops.batch_norm import BatchNormStep

CUDA_GRID_LIMITS = (2**31 - 1, 65535, 65535)


class _GridRecorder:
    """Stands in for a kernel: ``kernel[grid](...)`` records ``grid`` and does nothing."""

    def __init__(self, name: str, grids: list):
        self.name, self.grids = name, grids

    def __getitem__(self, grid):
        return lambda *args, **kwargs: self.grids.append((self.name, tuple(grid)))


def _record_grids(monkeypatch, *modules) -> list:
    grids = []
    for module in modules:
        for name in [n for n in vars(module) if n.startswith("_") and n.endswith("_kernel")]:
            monkeypatch.setattr(module, name, _GridRecorder(name, grids))
    return grids


def test_grids_fit_cuda_limits_for_large_volumes(kernels_for, monkeypatch):
    gating, msdc = kernels_for("cpu", "gating"), kernels_for("cpu", "msdc")
    monkeypatch.setattr("mmscale.ops._triton_utils.POISON_OUTPUTS", False)
    grids = _record_grids(monkeypatch, gating, msdc)
    # 65 x 256 x 256 voxels: more than 65535 tiles of 64 voxels
    shape = (1, 2, 65, 256, 256)
    x = torch.randn(shape).contiguous(memory_format=torch.channels_last_3d).requires_grad_()
    avg, mx = gating.channel_pool_triton(x)
    gc = torch.rand(1, 2, 1, 1, 1, requires_grad=True)
    pooled = gating.spatial_pool_triton(x, gc)
    gs = torch.rand(1, 1, *shape[2:], requires_grad=True)
    gated = gating.apply_gates_triton(x, gc, gs)
    ws = [torch.randn(2, 1, k, k, k, requires_grad=True) for k in (1, 3, 5)]
    steps = [BatchNormStep(torch.ones(2, requires_grad=True), torch.zeros(2, requires_grad=True), torch.zeros(2),
                           torch.ones(2), True, 0.1, 1e-5) for _ in ws]
    y = msdc.multiscale_depthwise_conv3d_triton(x, ws, steps, "add")
    outs = [avg, mx, pooled, gated, y]
    torch.autograd.backward(outs, [torch.ones_like(t) for t in outs])
    names = {name for name, _ in grids}
    assert len(names) == 9, sorted(names)  # every kernel, forward and backward, was launched
    assert max(g[0] for _, g in grids) > 65535  # the volume needs more programs than axes 1 and 2 allow
    for name, grid in grids:
        for axis, (n, limit) in enumerate(zip(grid, CUDA_GRID_LIMITS, strict=False)):
            assert 1 <= n <= limit, f"{name}: grid {grid} exceeds CUDA's limit {limit} on axis {axis}"
