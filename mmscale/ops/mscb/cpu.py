"""The multi-scale convolution block's training step as one autograd function, for CPU.

Written as separate PyTorch ops, one training step of the block allocates a fresh
full-size tensor for almost every elementwise step (each BatchNorm output, each
ReLU6 output, each branch sum, each gradient of those) and autograd keeps most of
them until the backward. On CPU every fresh large tensor is a fresh memory mapping
whose pages fault on first touch: at ``[2, 512, 6, 48, 48]`` float32 (57 MB) that
costs about as much as a whole pass of arithmetic over it. This function computes
the same step with what it needs and nothing more:

* forward: ``a = x W1^T`` and its BatchNorm with the batch statistics
  (``native_batch_norm``, which also updates the running statistics as
  ``F.batch_norm`` does), clamped in place to ``h``; every depthwise branch
  normalised into one reused buffer, clamped in place and added into the branch
  sum ``s``; ``p = s W2^T`` over all positions at once (one GEMM), normalised,
  the residual added in place, and one conversion when NCDHW is asked for;
* a ``1 x 1 x 1`` branch (``z = w * h`` per channel) is never written: its batch
  statistics follow from those of ``h``, its output comes straight from ``h``;
* backward: one scratch buffer goes round the branches; in it the ReLU6 mask is
  rebuilt from the pre-activation (``0 < clamp(u, 0, 6) < 6`` exactly where
  ``0 < u < 6``) and each BatchNorm's backward runs in place (the two per-channel
  sums from ``native_batch_norm_backward``, then three passes); the depthwise
  gradients are those of :mod:`mmscale.ops.depthwise_conv3d.cpu`;
* double backward (``create_graph=True``) differentiates a plain recomputation.

Saved for the backward: the input, ``a``, ``h``, the outputs of the larger
branches before their BatchNorm, the branch sum and ``p`` (the plain composition
also keeps every normalised and clamped copy).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from einops import rearrange

from mmscale.ops.batch_norm import BatchNormStep, update_running_stats
from mmscale.ops.depthwise_conv3d.cpu import depthwise_weight_grad

__all__ = ["MSCBTrainFunction", "mscb_inference", "shuffled"]

_CL = torch.channels_last_3d
_NBN = torch.ops.aten.native_batch_norm
_NBN_BACKWARD = torch.ops.aten.native_batch_norm_backward


def _rows(t: torch.Tensor) -> torch.Tensor:
    """[B, C, D, H, W] in channels_last_3d -> [B*D*H*W, C] view."""
    return rearrange(t, "b c d h w -> (b d h w) c")


def _bn_forward(z: torch.Tensor, step: BatchNormStep, out: torch.Tensor | None = None):
    """Batch-statistics BatchNorm of rows ``z`` [N, C] (running statistics updated); (out, mean, invstd)."""
    if out is None:
        return _NBN(z, step.weight, step.bias, step.running_mean, step.running_var, True, step.momentum, step.eps)
    mean = z.new_empty(z.shape[-1] if z.dim() == 2 else z.shape[1])
    invstd = torch.empty_like(mean)
    _NBN.out(z, step.weight, step.bias, step.running_mean, step.running_var, True, step.momentum, step.eps,
             out=out, save_mean=mean, save_invstd=invstd)
    return out, mean, invstd


def _bn_backward(grad, z, step: BatchNormStep, mean, invstd, need_wb: tuple[bool, bool]):
    """``native_batch_norm_backward`` with batch statistics: (grad_z, grad_weight, grad_bias)."""
    return _NBN_BACKWARD(grad, z, step.weight, step.running_mean, step.running_var, mean, invstd, True, step.eps,
                         [True, *need_wb])


def _bn_backward_(grad, z, step: BatchNormStep, mean, invstd, need_wb: tuple[bool, bool]):
    """:func:`_bn_backward` for rows [N, C], written over ``grad`` instead of a fresh tensor.

    ``native_batch_norm_backward`` gives the two per-channel sums without the input
    gradient; ``grad_z = scale * (g - mean(g) - zhat * mean(g * zhat))`` is then three
    in-place passes over ``grad``.
    """
    _, sum_g_zhat, sum_g = _NBN_BACKWARD(grad, z, step.weight, None, None, mean, invstd, True, step.eps,
                                         [False, True, True])
    n = grad.shape[0]
    scale = step.weight * invstd
    m1, m2 = sum_g / n, sum_g_zhat / n
    beta = -scale * m2 * invstd  # coefficient of z
    grad.mul_(scale).add_(scale * (m2 * invstd * mean - m1)).addcmul_(z, beta)
    return grad, sum_g_zhat if need_wb[0] else None, sum_g if need_wb[1] else None


def _channel_dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``(a * b).sum(0)`` for rows [N, C] without the product tensor (one reduction kernel)."""
    zeros = a.new_zeros(a.shape[1])
    return _NBN_BACKWARD(a, b, None, None, None, zeros, torch.ones_like(zeros), True, 0.0, [False, True, False])[1]


def shuffled(w_project: torch.Tensor, groups: int) -> torch.Tensor:
    """The projection weight [C_out, E] with a channel shuffle of ``groups`` folded in (a copy).

    The shuffle sends channel ``a * (E / g) + b`` to position ``b * g + a``, so
    ``W @ shuffle(z) = W' @ z`` with ``W'[:, a * (E / g) + b] = W[:, b * g + a]``.

    Args:
        w_project (torch.Tensor): projection weight [C_out, E].
        groups (int): shuffle groups (1: no shuffle, ``w_project`` itself).

    Returns:
        torch.Tensor: [C_out, E].

    Example:
        >>> shuffled(torch.arange(4.0).view(1, 4), 2).tolist()
        [[0.0, 2.0, 1.0, 3.0]]
    """
    return w_project if groups == 1 else rearrange(w_project, "o (b a) -> o (a b)", a=groups)


def _unshuffled(grad: torch.Tensor, groups: int) -> torch.Tensor:
    """The inverse column permutation of :func:`shuffled`, for the weight's gradient."""
    return grad if groups == 1 else rearrange(grad, "o (a b) -> o (b a)", a=groups)


def _affine(mean: torch.Tensor, invstd: torch.Tensor, step: BatchNormStep) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel (scale, shift) with ``BN(z) = z * scale + shift`` for the saved statistics."""
    scale = step.weight * invstd
    return scale, step.bias - mean * scale


class MSCBTrainFunction(torch.autograd.Function):
    """One MSCB training step (every BatchNorm with batch statistics), stride 1, branches added.

    Arguments of ``apply``: ``x`` [B, C, D, H, W] channels_last_3d; ``w_expand``
    [E, C]; ``w_project`` [C_out, E]; ``w_shortcut`` [C_out, C] or None (identity
    residual); ``config``: (``shuffle_groups``, the channel shuffle before the
    projection, folded into a temporary copy of its weight; ``out_channels_last``,
    the memory format of the result); ``steps`` (BatchNormSteps: the expansion's,
    one per branch, the projection's); then the depthwise filters [E, 1, kd, kh, kw]
    and the affine parameters of every BatchNorm in ``steps`` order (weights, then
    biases). Returns [B, C_out, D, H, W].
    """

    @staticmethod
    def forward(ctx, x, w_expand, w_project, w_shortcut, config, steps, *rest):
        shuffle_groups, out_channels_last = config
        n_br = len(steps) - 2
        dw = rest[:n_br]
        b, c, d, h_, w_ = x.shape
        e = w_expand.shape[0]
        xr = _rows(x)  # [N, C]
        a = torch.mm(xr, w_expand.t())  # [N, E]
        h, mean_a, invstd_a = _bn_forward(a, steps[0])
        h.clamp_(0.0, 6.0)
        hv = rearrange(h, "(b d h w) e -> b e d h w", b=b, d=d, h=h_, w=w_)  # channels_last_3d view
        zs, stats = [], []
        s = tmp = h_stats = None
        n_rows = h.shape[0]
        for wk, step in zip(dw, steps[1:-1], strict=True):
            ks = tuple(wk.shape[2:])
            if ks == (1, 1, 1):
                # z = w * h per channel: its batch statistics follow from h's, so z is never
                # written; the branch output comes straight from h
                if h_stats is None:
                    # (mean, biased variance) with BatchNorm's own statistics kernel (var_mean
                    # reduces over the rows about 10x slower)
                    h_stats = torch.ops.aten.batch_norm_update_stats(h, None, None, 0.0)
                wv = wk.view(e)
                mean, var = wv * h_stats[0], wv * wv * h_stats[1]
                invstd = torch.rsqrt(var + step.eps)
                update_running_stats([step], mean[None], (var * (n_rows / max(n_rows - 1, 1)))[None])
                scale, shift = _affine(mean, invstd, step)
                if s is None:
                    s = torch.addcmul(shift, h, wv * scale).clamp_(0.0, 6.0)
                else:
                    tmp = torch.empty_like(s) if tmp is None else tmp
                    s.add_(torch.addcmul(shift, h, wv * scale, out=tmp).clamp_(0.0, 6.0))
                zs.append(None)
                stats.append((mean, invstd))
                continue
            # oneDNN may answer in NCDHW for an input whose layout is ambiguous (B = 1):
            # the rows must be contiguous for the out= BatchNorm below
            z = _rows(F.conv3d(hv, wk, None, 1, tuple(q // 2 for q in ks), 1, e)).contiguous()
            zs.append(z)
            if s is None:
                s, mean, invstd = _bn_forward(z, step)
                s.clamp_(0.0, 6.0)
            else:
                tmp = torch.empty_like(s) if tmp is None else tmp
                _, mean, invstd = _bn_forward(z, step, out=tmp)
                s.add_(tmp.clamp_(0.0, 6.0))
            stats.append((mean, invstd))
        del tmp
        # the projection in rows (one GEMM over every position is faster than one per
        # sample), converted once at the end when NCDHW is asked for
        p = torch.mm(s, shuffled(w_project, shuffle_groups).t())  # [N, C_out]
        y, mean_p, invstd_p = _bn_forward(p, steps[-1])
        y.add_(xr) if w_shortcut is None else y.addmm_(xr, w_shortcut.t())
        out = rearrange(y, "(b d h w) o -> b o d h w", b=b, d=d, h=h_, w=w_)
        if not out_channels_last:
            out = out.contiguous()
        ctx.steps = steps
        ctx.n_br = n_br
        ctx.shuffle_groups = shuffle_groups
        ctx.stats = [(mean_a, invstd_a), *stats, (mean_p, invstd_p)]
        ctx.has_shortcut = w_shortcut is not None
        ctx.h_stats = h_stats
        ctx.z_saved = [z is not None for z in zs]
        ctx.save_for_backward(x, w_expand, w_project, w_shortcut, a, h, s, p, *(z for z in zs if z is not None), *dw)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        if torch.is_grad_enabled():  # create_graph=True: differentiate a recomputation instead
            return _backward_by_recompute(ctx, grad_out)
        steps, n_br = ctx.steps, ctx.n_br
        x, w_expand, w_project, w_shortcut, a, h, s, p, *rest = ctx.saved_tensors
        n_z = sum(ctx.z_saved)
        saved_z, dw = iter(rest[:n_z]), rest[n_z:]
        zs = [next(saved_z) if saved else None for saved in ctx.z_saved]
        needs = ctx.needs_input_grad
        b, c, d, h_, w_ = x.shape
        e = w_expand.shape[0]
        n_steps = len(steps)
        # input positions of the BatchNorm affine parameters in apply's argument list
        first_affine = 6 + n_br

        def need_wb(i: int) -> tuple[bool, bool]:
            return needs[first_affine + i], needs[first_affine + n_steps + i]

        grad_w = [None] * n_steps
        grad_b = [None] * n_steps
        xr = _rows(x)
        # the projection's BatchNorm, then the projection
        mean_p, invstd_p = ctx.stats[-1]
        gy = _rows(grad_out.contiguous(memory_format=_CL))  # [N, C_out]
        gp, grad_w[-1], grad_b[-1] = _bn_backward(gy, p, steps[-1], mean_p, invstd_p, need_wb(n_steps - 1))
        gs = torch.mm(gp, shuffled(w_project, ctx.shuffle_groups))  # [N, E]
        # the branches: ReLU6 mask from the rebuilt pre-activation, BatchNorm, depthwise conv
        hv = rearrange(h, "(b d h w) e -> b e d h w", b=b, d=d, h=h_, w=w_)
        # one scratch buffer goes round the branches: it holds u, then the masked
        # gradient, then (in place) the gradient of z; the first branch's becomes gh
        spare = torch.empty_like(gs)
        gh = None
        grad_dw = [None] * n_br
        for k in range(n_br):
            z, wk, step = zs[k], dw[k], steps[1 + k]
            mean, invstd = ctx.stats[1 + k]
            scale, shift = _affine(mean, invstd, step)
            buf = spare if spare is not None else torch.empty_like(gs)
            spare = None
            ks = tuple(wk.shape[2:])
            if ks == (1, 1, 1):
                # z = w * h was never written: the BatchNorm of z is that of h with mean
                # mean_h and inverse deviation w * invstd, whose input gradient is w * grad_z
                wv = wk.view(e)
                mean_h, var_h = ctx.h_stats
                torch.addcmul(shift, h, wv * scale, out=buf)  # the branch's BatchNorm output u
                torch.ops.aten.hardtanh_backward.grad_input(gs, buf, 0.0, 6.0, grad_input=buf)
                sum_gh = _channel_dot(buf, h) if needs[6 + k] else None
                gx_k, gw_, gb_ = _bn_backward_(buf, h, step, mean_h, wv * invstd, (True, True))
                if needs[6 + k]:
                    n = h.shape[0]
                    m1, m2 = gb_ / n, gw_ / n
                    grad_dw[k] = (step.weight * invstd * (sum_gh - m1 * n * mean_h - m2 * wv * invstd * n * var_h)
                                  ).view(e, 1, 1, 1, 1)
                grad_w[1 + k] = gw_ if need_wb(1 + k)[0] else None
                grad_b[1 + k] = gb_ if need_wb(1 + k)[1] else None
                if gh is None:
                    gh = gx_k
                else:
                    gh.add_(gx_k)
                    spare = gx_k
                del gx_k
            else:
                torch.addcmul(shift, z, scale, out=buf)  # the branch's BatchNorm output u
                torch.ops.aten.hardtanh_backward.grad_input(gs, buf, 0.0, 6.0, grad_input=buf)
                gz, grad_w[1 + k], grad_b[1 + k] = _bn_backward_(buf, z, step, mean, invstd, need_wb(1 + k))
                gzv = rearrange(gz, "(b d h w) e -> b e d h w", b=b, d=d, h=h_, w=w_)
                pad = tuple(q // 2 for q in ks)
                if needs[6 + k]:
                    grad_dw[k] = depthwise_weight_grad(hv, gzv, ks, (1, 1, 1), pad)
                pad_t = tuple(q - 1 - p for q, p in zip(ks, pad, strict=True))
                gx_k = _rows(F.conv3d(gzv, wk.flip((2, 3, 4)), None, 1, pad_t, 1, e)).contiguous()
                gh = gx_k if gh is None else gh.add_(gx_k)
                del gx_k, gzv
                spare = gz
                del gz
        del spare, gs
        # the projection's weight gradient once the branch buffers are gone (at small
        # volumes the weight-sized products, not the activations, set the peak)
        g_project = _unshuffled(torch.mm(gp.t(), s), ctx.shuffle_groups) if needs[2] else None
        del gp
        # the expansion: ReLU6 mask (0 < h < 6), BatchNorm (in place), matrix product
        torch.ops.aten.hardtanh_backward.grad_input(gh, h, 0.0, 6.0, grad_input=gh)
        mean_a, invstd_a = ctx.stats[0]
        ga, grad_w[0], grad_b[0] = _bn_backward_(gh, a, steps[0], mean_a, invstd_a, need_wb(0))
        del gh
        g_expand = torch.mm(ga.t(), xr) if needs[1] else None
        g_shortcut = None
        grad_x = None
        if needs[0]:
            gxr = torch.mm(ga, w_expand)  # [N, C]
            gx = rearrange(gxr, "(b d h w) c -> b c d h w", b=b, d=d, h=h_, w=w_)
            if ctx.has_shortcut:
                gxr.addmm_(gy, w_shortcut)
            else:
                gxr.add_(gy)
            grad_x = gx
        if ctx.has_shortcut and needs[3]:
            g_shortcut = torch.mm(gy.t(), xr)
        return (grad_x, g_expand, g_project, g_shortcut, None, None, *grad_dw, *grad_w, *grad_b)


def _backward_by_recompute(ctx, grad_out):
    """The backward as a differentiable graph (for double backward): the forward recomputed in plain ops.

    The recomputation normalises with the batch statistics again (the same values)
    without touching the running statistics.
    """
    steps, n_br = ctx.steps, ctx.n_br
    x, w_expand, w_project, w_shortcut, *rest = ctx.saved_tensors
    dw = rest[4 + sum(ctx.z_saved):]
    inputs = [x, w_expand, w_project, w_shortcut, *dw, *(st.weight for st in steps), *(st.bias for st in steps)]
    positions = [0, 1, 2, 3, *range(6, 6 + n_br), *range(6 + n_br, 6 + n_br + 2 * len(steps))]
    # the saved tensors themselves (not detached copies), so the graph reaches the parameters
    leaves = inputs
    wanted = [t for t, i in zip(inputs, positions, strict=True) if t is not None and ctx.needs_input_grad[i]]
    lx, lw1, lw2, lws, *lrest = leaves
    ldw, lg, lb = lrest[:n_br], lrest[n_br:n_br + len(steps)], lrest[n_br + len(steps):]

    def bn(z, i):
        return F.batch_norm(z, None, None, lg[i], lb[i], True, 0.0, steps[i].eps)

    with torch.enable_grad():
        xr = _rows(lx)
        h = F.hardtanh(bn(xr @ lw1.t(), 0), 0.0, 6.0)
        hv = rearrange(h, "(b d h w) e -> b e d h w", b=x.shape[0], d=x.shape[2], h=x.shape[3], w=x.shape[4])
        s = 0
        for k, wk in enumerate(ldw):
            z = F.conv3d(hv, wk, None, 1, tuple(q // 2 for q in wk.shape[2:]), 1, wk.shape[0])
            s = s + F.hardtanh(bn(_rows(z), 1 + k), 0.0, 6.0)
        y = bn(s @ shuffled(lw2, ctx.shuffle_groups).t(), len(steps) - 1) + (xr if lws is None else xr @ lws.t())
        y = rearrange(y, "(b d h w) o -> b o d h w", b=x.shape[0], d=x.shape[2], h=x.shape[3], w=x.shape[4])
        grads = iter(torch.autograd.grad(y, wanted, grad_out, create_graph=True, allow_unused=True))
    out = [next(grads) if t is not None and ctx.needs_input_grad[i] else None
           for t, i in zip(inputs, positions, strict=True)]
    gx, g1, g2, gs_, *grest = out
    return (gx, g1, g2, gs_, None, None, *grest)


def _linear(rows: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, scale: torch.Tensor | None) -> torch.Tensor:
    """``rows @ weight^T * scale + bias`` (no ``scale``: ``rows @ weight^T + bias``), the scale in place."""
    if scale is None:
        return torch.addmm(bias, rows, weight.t())
    out = torch.mm(rows, weight.t())
    return torch.addcmul(bias, out, scale, out=out)


def mscb_inference(
    x: torch.Tensor,
    w_expand: torch.Tensor,
    b_expand: torch.Tensor,
    dw_weights: Sequence[torch.Tensor],
    dw_biases: Sequence[torch.Tensor],
    w_project: torch.Tensor,
    b_project: torch.Tensor,
    w_shortcut: torch.Tensor | None,
    out_channels_last: bool,
    expand_scale: torch.Tensor | None = None,
    project_scale: torch.Tensor | None = None,
) -> torch.Tensor:
    """The block without autograd, every BatchNorm already folded into the weights and biases.

    Writes in place wherever it can: the expansion's buffer becomes the branch sum once
    the depthwise convolutions have read it, each branch's clamp runs on its own
    convolution output, and the projection is written straight in the memory format
    of the result. Shapes as in :class:`MSCBTrainFunction` (biases [E] and [C_out]).
    ``expand_scale`` [E] / ``project_scale`` [C_out], when given, are BatchNorm scales
    not folded into the weight: they multiply the product's columns in place, before
    the bias.
    """
    b, c, d, h_, w_ = x.shape
    e = w_expand.shape[0]
    xr = _rows(x)
    h = _linear(xr, w_expand, b_expand, expand_scale).clamp_(0.0, 6.0)  # [N, E]
    hv = rearrange(h, "(b d h w) e -> b e d h w", b=b, d=d, h=h_, w=w_)
    convs, scales = [], []
    for wk, bk in zip(dw_weights, dw_biases, strict=True):
        ks = tuple(wk.shape[2:])
        if ks == (1, 1, 1):
            scales.append((wk.view(e), bk))
        else:
            z = F.conv3d(hv, wk, bk, 1, tuple(q // 2 for q in ks), 1, e)
            convs.append(_rows(z).contiguous().clamp_(0.0, 6.0))
    if scales:  # 1x1x1 branches: per-channel scale and shift, in h's own buffer once the convs have read it
        (w0, b0), rest = scales[0], scales[1:]
        if rest:
            base = h.clone()
            for wk, bk in rest:
                convs.append(torch.addcmul(bk, base, wk).clamp_(0.0, 6.0))
            del base
        s = torch.addcmul(b0, h, w0, out=h).clamp_(0.0, 6.0)
    else:
        s = convs.pop(0)
    for z in convs:
        s.add_(z)
    del convs
    # the projection in rows (the fastest GEMM shape here), the residual added in the same layout
    y = _linear(s, w_project, b_project, project_scale)
    y.add_(xr) if w_shortcut is None else y.addmm_(xr, w_shortcut.t())
    out = rearrange(y, "(b d h w) o -> b o d h w", b=b, d=d, h=h_, w=w_)
    return out if out_channels_last else out.contiguous()
