"""Backend selection shared by every op.

Order: an explicit ``backend=`` on the layer, else the
``MMSCALE_BACKEND`` environment variable, else ``"auto"``: Triton for CUDA tensors
when Triton imports, PyTorch otherwise. An explicit ``"triton"`` request that cannot
be honoured falls back to PyTorch with one warning per op, or raises when
``MMSCALE_STRICT=1``. With ``TRITON_INTERPRET=1`` set before Triton is imported, the
kernels run on CPU tensors through Triton's interpreter (that is how they are tested
without a GPU).
"""

from __future__ import annotations

import importlib
import os
import warnings
from collections.abc import Callable

import torch

__all__ = [
    "BACKENDS",
    "KERNEL_DTYPES",
    "check_backend",
    "cpu_autocast_enabled",
    "cpu_autograd_path",
    "tracing",
    "fallback",
    "kernels_reason",
    "kernels_unavailable",
    "load_kernels",
    "requested_backend",
    "resolve_backend",
    "sample_too_large",
    "dtype_unsupported",
    "select_backend",
    "strict",
    "triton_available",
    "triton_interpret",
    "triton_unavailable_reason",
]

BACKENDS = ("auto", "torch", "triton")

# the dtypes every kernel reads and writes (it computes in float32)
KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)

_warned: set[str] = set()


def check_backend(backend: str) -> str:
    """Validate a ``backend=`` argument.

    Args:
        backend (str): one of ``"auto"``, ``"torch"``, ``"triton"``.

    Returns:
        str: the same string.

    Raises:
        ValueError: if ``backend`` is not one of the three names.

    Example:
        >>> check_backend("torch")
        'torch'
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    return backend


_TRITON_AVAILABLE: bool | None = None


def triton_available() -> bool:
    """Whether ``import triton`` succeeds (cached).

    Returns:
        bool: True when Triton can be imported.

    Example:
        >>> isinstance(triton_available(), bool)
        True
    """
    # a plain module-level cache: functools.lru_cache makes Dynamo warn on every compiled call
    global _TRITON_AVAILABLE
    if _TRITON_AVAILABLE is None:
        try:
            import triton  # noqa: F401

            _TRITON_AVAILABLE = True
        except Exception:  # ImportError, or a broken install raising something else
            _TRITON_AVAILABLE = False
    return _TRITON_AVAILABLE


def triton_interpret() -> bool:
    """Whether Triton's CPU interpreter is enabled (``TRITON_INTERPRET=1``).

    Returns:
        bool: True when kernels may run on CPU tensors through the interpreter.

    Example:
        >>> isinstance(triton_interpret(), bool)
        True
    """
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def strict() -> bool:
    """Whether ``MMSCALE_STRICT=1`` turns backend fallbacks into errors.

    Returns:
        bool: True in strict mode.

    Example:
        >>> isinstance(strict(), bool)
        True
    """
    return os.environ.get("MMSCALE_STRICT", "0") == "1"


def requested_backend(backend: str = "auto") -> str:
    """The backend asked for: the explicit argument, else ``MMSCALE_BACKEND``.

    Args:
        backend (str): the layer's ``backend=`` argument.

    Returns:
        str: ``"auto"``, ``"torch"`` or ``"triton"``.

    Raises:
        ValueError: if the argument or ``MMSCALE_BACKEND`` names no backend.

    Example:
        >>> requested_backend("torch")
        'torch'
    """
    check_backend(backend)
    if backend != "auto":
        return backend
    env = os.environ.get("MMSCALE_BACKEND", "auto").strip().lower() or "auto"
    if env not in BACKENDS:
        raise ValueError(f"MMSCALE_BACKEND must be one of {BACKENDS}, got {env!r}")
    return env


def triton_unavailable_reason(x: torch.Tensor, has_kernel: bool = True) -> str | None:
    """Why the Triton kernels cannot run on ``x``, or None when they can.

    Args:
        x (torch.Tensor): the op's main input.
        has_kernel (bool): whether the op has Triton kernels at all.

    Returns:
        str | None: a human-readable reason, or None.

    Example:
        >>> triton_unavailable_reason(torch.zeros(1), has_kernel=False)
        'this op has no Triton kernel'
    """
    if not has_kernel:
        return "this op has no Triton kernel"
    if not triton_available():
        return "triton is not installed"
    if x.is_cuda:
        return None
    if x.device.type == "cpu" and triton_interpret():
        return None
    return f"tensors on {x.device.type!r} need CUDA (or TRITON_INTERPRET=1 for CPU tensors)"


def select_backend(
    backend: str, x: torch.Tensor, op: str, reason: str | None | Callable[[], str | None]
) -> str:
    """The one backend decision: ``"triton"`` or ``"torch"`` for ``op`` on ``x``.

    ``"auto"`` picks Triton for CUDA tensors the op supports and PyTorch otherwise,
    silently. An explicit ``"triton"`` that cannot run warns once (per op and reason)
    or raises under ``MMSCALE_STRICT=1`` (:func:`fallback`).

    Args:
        backend (str): ``"auto"`` (defers to ``MMSCALE_BACKEND``), ``"torch"`` or ``"triton"``.
        x (torch.Tensor): the op's main input, e.g. a volume [B, C, D, H, W].
        op (str): the op's name, used in the fallback message.
        reason (str | None | Callable[[], str | None]): why the op's kernels cannot
            run these arguments (the op's ``supports(...)``), or None when they can;
            or a function returning it, called only when Triton is in question (not
            for ``"torch"``, nor for ``"auto"`` on a CPU tensor).

    Returns:
        str: ``"torch"`` or ``"triton"``.

    Raises:
        ValueError: for an unknown backend name.
        RuntimeError: when ``"triton"`` was requested explicitly, ``reason`` is not
            None and ``MMSCALE_STRICT=1``.

    Example:
        >>> select_backend("torch", torch.zeros(1), op="demo", reason=None)
        'torch'
    """
    wanted = requested_backend(backend)
    if wanted == "torch" or (wanted == "auto" and not x.is_cuda):
        return "torch"
    if callable(reason):
        reason = reason()
    if reason is None:
        return "triton" if wanted == "triton" or x.is_cuda else "torch"
    if wanted == "triton":
        fallback(op, reason)
    return "torch"


def resolve_backend(backend: str, x: torch.Tensor, op: str, has_kernel: bool = True) -> str:
    """:func:`select_backend` with the device-level reason only (Triton present, tensor placement).

    Args:
        backend (str): the layer's ``backend=`` argument (``"auto"`` defers to
            ``MMSCALE_BACKEND``).
        x (torch.Tensor): the op's main input, e.g. a volume [B, C, D, H, W].
        op (str): the op's name, used in the fallback warning.
        has_kernel (bool): whether the op has Triton kernels.

    Returns:
        str: ``"torch"`` or ``"triton"``.

    Raises:
        ValueError: for an unknown backend name.
        RuntimeError: when ``"triton"`` was requested explicitly, cannot run and
            ``MMSCALE_STRICT=1``.

    Example:
        >>> resolve_backend("torch", torch.zeros(1), op="demo")
        'torch'
    """
    return select_backend(backend, x, op, triton_unavailable_reason(x, has_kernel))


def sample_too_large(x: torch.Tensor) -> str | None:
    """Why ``x`` [B, C, D, H, W] is beyond the kernels' int32 per-sample indexing, or None.

    The kernels address whole tensors in int64, but index the voxels of one sample
    (D*H*W) and the channels in int32.

    Example:
        >>> sample_too_large(torch.zeros(1, 2, 3, 4, 5)) is None
        True
    """
    d, h, w = x.shape[-3:]
    if d * h * w >= 2**31 or x.shape[1] >= 2**31:
        return f"a sample of {d}x{h}x{w} voxels and {x.shape[1]} channels (the kernels need D*H*W and C below 2**31)"
    return None


def dtype_unsupported(dtype: torch.dtype) -> str | None:
    """Why the kernels cannot take tensors of ``dtype``, or None.

    Example:
        >>> dtype_unsupported(torch.float64)
        'dtype torch.float64 (the kernels support float32, float16, bfloat16)'
    """
    if dtype in KERNEL_DTYPES:
        return None
    return f"dtype {dtype} (the kernels support float32, float16, bfloat16)"


def fallback(op: str, reason: str, warn_key: str | None = None) -> None:
    """Report that an explicit ``"triton"`` request for ``op`` runs in PyTorch instead.

    Warns once per ``warn_key`` (default: per op and reason), or raises when
    ``MMSCALE_STRICT=1``.

    Args:
        op (str): the op's name.
        reason (str): why the kernels cannot run.
        warn_key (str | None): what "once" is counted over.

    Raises:
        RuntimeError: when ``MMSCALE_STRICT=1``.

    Example:
        >>> import warnings
        >>> with warnings.catch_warnings(record=True):
        ...     fallback("demo", "a reason")
    """
    message = f"mmscale: {op}: backend='triton' requested but {reason}; using the PyTorch path"
    if strict():
        raise RuntimeError(message + " (MMSCALE_STRICT=1 makes this an error)")
    key = warn_key or f"{op}: {reason}"
    if key not in _warned:
        _warned.add(key)
        warnings.warn(message, RuntimeWarning, stacklevel=4)


def kernels_reason(module: str) -> str | None:
    """Why the kernel module cannot be used (it failed to import), or None.

    Args:
        module (str): dotted module name, e.g. ``"mmscale.ops.gating.triton"``.

    Returns:
        str | None: a reason for :func:`select_backend`, or None.

    Example:
        >>> kernels_reason("mmscale.ops.no_such_module")
        'the Triton kernels failed to import'
    """
    return None if load_kernels(module) is not None else "the Triton kernels failed to import"


_KERNEL_MODULES: dict[str, object] = {}  # a plain dict, not lru_cache: Dynamo traces it


def kernels_unavailable(x: torch.Tensor, module: str) -> str | None:
    """Why no kernel of ``module`` can run on ``x`` [B, C, D, H, W], whatever the op's arguments.

    Triton missing, the tensor's device, a sample beyond the kernels' int32 indexing,
    or a kernel module that fails to import; checked in that order, so a CPU process
    without ``TRITON_INTERPRET=1`` never imports (decorates) the kernels.

    Returns:
        str | None: a reason for :func:`select_backend`, or None.

    Example:
        >>> import os
        >>> os.environ["TRITON_INTERPRET"], saved = "0", os.environ.get("TRITON_INTERPRET")
        >>> "CUDA" in kernels_unavailable(torch.zeros(1, 1, 1, 1, 1), "mmscale.ops.gating.triton")
        True
        >>> os.environ["TRITON_INTERPRET"] = saved if saved is not None else "0"
    """
    return triton_unavailable_reason(x) or sample_too_large(x) or kernels_reason(module)


def load_kernels(module: str):
    """Import an op's Triton module on first use; None when it fails to import.

    Kernels are imported lazily because Triton decides when a kernel is decorated
    whether it runs compiled or through the interpreter (``TRITON_INTERPRET``).

    Args:
        module (str): dotted module name, e.g. ``"mmscale.ops.gating.triton"``.

    Returns:
        module | None: the imported module, or None for a broken Triton install.

    Example:
        >>> load_kernels("mmscale.ops.no_such_module") is None
        True
    """
    if module not in _KERNEL_MODULES:
        try:
            _KERNEL_MODULES[module] = importlib.import_module(module)
        except Exception:  # a broken Triton install: dispatch falls back (with a warning)
            _KERNEL_MODULES[module] = None
    return _KERNEL_MODULES[module]


def cpu_autocast_enabled() -> bool:
    """Whether CPU autocast is active (works across torch versions).

    Returns:
        bool: True inside ``torch.autocast("cpu")``.

    Example:
        >>> cpu_autocast_enabled()
        False
    """
    return torch.is_autocast_enabled("cpu")


def tracing() -> bool:
    """Whether ``torch.compile`` or ``torch.export`` is tracing the current call.

    The CPU autograd functions step aside then, so tracers see plain ops.

    Returns:
        bool: True while tracing.

    Example:
        >>> tracing()
        False
    """
    compiler = getattr(torch, "compiler", None)
    return any(getattr(compiler, name, lambda: False)() for name in ("is_compiling", "is_exporting"))


def cpu_autograd_path(x: torch.Tensor) -> bool:
    """Whether mmscale's CPU autograd functions may compute an op on ``x``.

    On CPU, float32/float64, outside CPU autocast (autocast would not see through a
    custom function, so ATen's dtype rules are kept there).

    Args:
        x (torch.Tensor): the op's input.

    Returns:
        bool: True when the CPU path applies.

    Example:
        >>> cpu_autograd_path(torch.zeros(2)), cpu_autograd_path(torch.zeros(2, dtype=torch.float16))
        (True, False)
    """
    return x.device.type == "cpu" and x.dtype in (torch.float32, torch.float64) and not cpu_autocast_enabled()
