"""Native CPU kernels in C++, called from jitted code as XLA FFI custom calls: the depthwise
convolution's forward, input gradient and kernel gradient, BatchNorm in training mode with its
ReLU / ReLU6 (forward and backward pass; both in ``cpu_kernels.cc``), and a whole widening 1x1
CSR layer (forward and backward pass, ``pointwise_csr.cc``; :mod:`csr_jax.pointwise_native` says
why and when).

Why: XLA:CPU has no fast depthwise convolution. csr_jax's pure-XLA CPU form (shifted taps,
:mod:`csr_jax.depthwise`) made it usable, but its kernel gradient is k*k reductions that each read
the whole input and cotangent, and its forward reads a padded copy of the input that XLA writes
first; in the MobileNetV2-CIFAR train step those were a third of the time
(``benchmarks/RESULTS.md`` section 13). Here each of the three is one pass over its operands.
BatchNorm + activation, as XLA fusions, was most of the rest of the elementwise time; here its
forward is two passes (statistics, then normalise + activate) and its backward two more.

How it gets built: on first use, with the machine's C++ compiler (``$CXX``, else ``g++``,
``c++`` or ``clang++``), ``-O3 -march=native``, against the FFI headers that jaxlib ships
(``jax.ffi.include_dir()``). The library is cached under ``$CSR_JAX_CACHE_DIR`` (default
``~/.cache/csr_jax``), keyed by the source, the jaxlib version, the compiler and the CPU's
feature flags, so a shared home directory on machines with different CPUs keeps one build per
CPU kind. The build is written to a temporary file and renamed into place, so processes that
build at the same time (several hosts, several test workers) do not see each other's half-written
files. A machine without a compiler, or a failed build, warns once and runs the pure-XLA form:
slower, same results.

Switches: ``CSR_JAX_NATIVE=0`` in the environment turns the kernels off for the process;
:func:`disabled` turns them off for what is traced inside a block (tests and benchmarks compare
the two forms with it). Only float32 on the CPU path uses them (bf16 and other dtypes keep the
pure-XLA form).

Each depthwise op is linear in each of its two operands and the three are each other's
transposes, so each has a ``jax.custom_vjp`` made of the other two: gradients of any order are
native too. The BatchNorm and 1x1 CSR passes carry the VJP of the XLA expression they replace, so
their gradients of gradients are the XLA form's. Forward-mode differentiation is not defined (as
for the pure-XLA CPU form; use ``forced_impl("xla")``).
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import threading
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array

__all__ = [
    "ACTIVATIONS",
    "available",
    "batch_norm_backward",
    "batch_norm_forward",
    "build_error",
    "depthwise_forward",
    "depthwise_input_grad",
    "depthwise_kernel_grad",
    "disabled",
    "enabled",
    "pointwise_csr_backward",
    "pointwise_csr_forward",
]

#: The C++ sources, compiled together into one library (``parallel.h`` is included by both).
SOURCES = tuple(
    Path(__file__).with_name(name) for name in ("cpu_kernels.cc", "pointwise_csr.cc", "parallel.h")
)

#: FFI target name -> the handler symbol in the library.
_TARGETS = {
    "csr_jax_depthwise_forward": "CsrDepthwiseForward",
    "csr_jax_depthwise_input_grad": "CsrDepthwiseInputGrad",
    "csr_jax_depthwise_kernel_grad": "CsrDepthwiseKernelGrad",
    "csr_jax_batch_norm_forward": "CsrBatchNormForward",
    "csr_jax_batch_norm_backward": "CsrBatchNormBackward",
    "csr_jax_pointwise_csr_forward": "CsrPointwiseForward",
    "csr_jax_pointwise_csr_backward": "CsrPointwiseBackward",
}

_lock = threading.Lock()
_library: ctypes.CDLL | None = None
_error: str | None = None
_disabled_depth = 0


def _env_enabled() -> bool:
    return os.environ.get("CSR_JAX_NATIVE", "1").strip().lower() not in ("0", "false", "no", "off")


def _compiler() -> str | None:
    for name in (os.environ.get("CXX"), "g++", "c++", "clang++"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def _cpu_flags() -> str:
    """The CPU's feature flags (``-march=native`` builds for exactly these)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def _cache_dir() -> Path:
    root = os.environ.get("CSR_JAX_CACHE_DIR") or os.path.join(
        os.path.expanduser("~"), ".cache", "csr_jax"
    )
    return Path(root)


def _build(compiler: str) -> Path:
    """The library for this source, jaxlib, compiler and CPU: from the cache, or built now."""
    import jaxlib

    version = subprocess.run(
        [compiler, "--version"], capture_output=True, text=True, timeout=60
    ).stdout
    key = hashlib.sha256(
        b"\0".join(
            s.encode()
            for s in (
                *(f.read_text() for f in SOURCES),
                jaxlib.__version__,
                compiler,
                version,
                _cpu_flags(),
            )
        )
    ).hexdigest()[:16]
    target = _cache_dir() / f"cpu_kernels-{platform.machine()}-{key}.so"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    include = jax.ffi.include_dir()
    errors = []
    # -march=native first; a compiler that does not know it for this CPU gets a plain build.
    for arch in (["-march=native"], []):
        fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
        os.close(fd)
        command = [
            compiler,
            "-O3",
            *arch,
            "-std=c++17",
            "-shared",
            "-fPIC",
            "-isystem",
            include,
            *(str(f) for f in SOURCES if f.suffix == ".cc"),
            "-o",
            tmp,
        ]
        result = subprocess.run(command, capture_output=True, text=True, timeout=300)
        if result.returncode == 0:
            os.replace(tmp, target)
            return target
        os.unlink(tmp)
        errors.append(f"$ {' '.join(command)}\n{result.stderr[-2000:]}")
    raise RuntimeError("\n".join(errors))


def _load() -> ctypes.CDLL | None:
    """Builds (or finds) and registers the kernels once per process; None if that failed."""
    global _library, _error
    with _lock:
        if _library is not None or _error is not None:
            return _library
        compiler = _compiler()
        if compiler is None:
            _error = "no C++ compiler found ($CXX, g++, c++ or clang++)"
        else:
            try:
                library = ctypes.CDLL(str(_build(compiler)))
                for name, symbol in _TARGETS.items():
                    jax.ffi.register_ffi_target(
                        name, jax.ffi.pycapsule(getattr(library, symbol)), platform="cpu"
                    )
                _library = library
            except Exception as error:  # noqa: BLE001 - any failure means: use the XLA form
                _error = f"{type(error).__name__}: {error}"
        if _error is not None:
            warnings.warn(
                "csr_jax: the native CPU kernels could not be built, so depthwise convs and "
                "BatchNorm on the CPU run the slower pure-XLA form (same results). "
                f"Cause: {_error}. "
                "Install a C++ compiler (e.g. g++) to get them, or set CSR_JAX_NATIVE=0 to "
                "silence this.",
                RuntimeWarning,
                stacklevel=3,
            )
        return _library


def available() -> bool:
    """True when the kernels are built and registered in this process (builds them if needed)."""
    return _load() is not None


def build_error() -> str | None:
    """Why the kernels could not be built (after :func:`available` returned False), else None."""
    return _error


def enabled() -> bool:
    """Whether depthwise convs and BatchNorm traced now use the native kernels: not switched off,
    the CPU backend with ONE device, and built.

    One device only: XLA's SPMD partitioner cannot split a custom call, so with the batch sharded
    over several CPU devices it would gather the whole batch to every device; the pure-XLA forms
    partition like any other op."""
    return (
        _env_enabled()
        and _disabled_depth == 0
        and jax.default_backend() == "cpu"
        and jax.device_count() == 1
        and available()
    )


@contextlib.contextmanager
def disabled() -> Iterator[None]:
    """Depthwise convs and BatchNorm TRACED inside the block use the pure-XLA CPU form, not the
    native kernels."""
    global _disabled_depth
    _disabled_depth += 1
    try:
        yield
    finally:
        _disabled_depth -= 1


def _attrs(strides: Sequence[int], pads_low: Sequence[int]) -> dict[str, np.int64]:
    (sh, sw), (pt, pl) = strides, pads_low
    return {"sh": np.int64(sh), "sw": np.int64(sw), "pt": np.int64(pt), "pl": np.int64(pl)}


def _call(target: str, shape: Sequence[int], a: Array, b: Array, strides, pads_low) -> Array:
    out = jax.ShapeDtypeStruct(tuple(shape), jnp.float32)
    # Under jax.vmap the op runs once per mapped element (correct; vmap is not the fast path).
    call = jax.ffi.ffi_call(target, out, vmap_method="sequential")
    return call(a, b, **_attrs(strides, pads_low))


# The three ops, each a custom_vjp made of the other two. F(x, k) is the forward, I(g, k) its
# transpose in x (the input gradient), K(x, g) its transpose in k (the kernel gradient):
#   <F(x, k), g> = <x, I(g, k)> = <k, K(x, g)>.
# Static arguments: strides (sh, sw), pads_low (pt, pl), and the shape of the result the op
# cannot infer (x's for I, the kernel's for K).


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _forward(x, k, strides, pads_low, out_hw):
    n, _, _, c = x.shape
    return _call("csr_jax_depthwise_forward", (n, *out_hw, c), x, k, strides, pads_low)


def _forward_fwd(x, k, strides, pads_low, out_hw):
    return _forward(x, k, strides, pads_low, out_hw), (x, k)


def _forward_bwd(strides, pads_low, out_hw, residuals, g):
    x, k = residuals
    return (
        _input_grad(g, k, strides, pads_low, x.shape),
        _kernel_grad(x, g, strides, pads_low, k.shape),
    )


_forward.defvjp(_forward_fwd, _forward_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _input_grad(g, k, strides, pads_low, x_shape):
    return _call("csr_jax_depthwise_input_grad", x_shape, g, k, strides, pads_low)


def _input_grad_fwd(g, k, strides, pads_low, x_shape):
    return _input_grad(g, k, strides, pads_low, x_shape), (g, k)


def _input_grad_bwd(strides, pads_low, x_shape, residuals, u):
    g, k = residuals
    return (
        _forward(u, k, strides, pads_low, g.shape[1:3]),
        _kernel_grad(u, g, strides, pads_low, k.shape),
    )


_input_grad.defvjp(_input_grad_fwd, _input_grad_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _kernel_grad(x, g, strides, pads_low, k_shape):
    return _call("csr_jax_depthwise_kernel_grad", k_shape, x, g, strides, pads_low)


def _kernel_grad_fwd(x, g, strides, pads_low, k_shape):
    return _kernel_grad(x, g, strides, pads_low, k_shape), (x, g)


def _kernel_grad_bwd(strides, pads_low, k_shape, residuals, v):
    x, g = residuals
    return (
        _input_grad(g, v, strides, pads_low, x.shape),
        _forward(x, v, strides, pads_low, g.shape[1:3]),
    )


_kernel_grad.defvjp(_kernel_grad_fwd, _kernel_grad_bwd)


def depthwise_forward(
    x: Array, kernel: Array, strides: Sequence[int], pads_low: Sequence[int], out_hw: Sequence[int]
) -> Array:
    """``y[n, ho, wo, c] = sum_ij x[n, ho*sh + i - pt, wo*sw + j - pl, c] * kernel[i, j, 0, c]``,
    x zero outside its bounds; float32 NHWC ``x``, ``(kh, kw, 1, C)`` kernel, ``y`` of spatial
    size ``out_hw``. Differentiable (reverse mode, any order)."""
    return _forward(x, kernel, tuple(strides), tuple(pads_low), tuple(out_hw))


def depthwise_input_grad(
    g: Array, kernel: Array, strides: Sequence[int], pads_low: Sequence[int], x_shape: Sequence[int]
) -> Array:
    """The transpose of :func:`depthwise_forward` in ``x``: the input gradient for cotangent ``g``."""
    return _input_grad(g, kernel, tuple(strides), tuple(pads_low), tuple(x_shape))


def depthwise_kernel_grad(
    x: Array, g: Array, strides: Sequence[int], pads_low: Sequence[int], kernel_shape: Sequence[int]
) -> Array:
    """The transpose of :func:`depthwise_forward` in the kernel: the kernel gradient for input ``x``
    and cotangent ``g``, summed over batch and space in float32."""
    return _kernel_grad(x, g, tuple(strides), tuple(pads_low), tuple(kernel_shape))


#: The activations the native BatchNorm applies after normalising, by the code the kernel takes:
#: ``jax.nn.relu`` (gradient where z > 0) and ``jax.nn.relu6`` (gradient where 0 < z < 6), the
#: same gradients as JAX's own. The kernel also has code 0 (no activation), which csr_jax does not
#: use: a BatchNorm without activation is followed by a residual add that XLA fuses its
#: normalisation into, and a custom call's separate output made ResNet-56's train step plan 25%
#: more memory at the same speed (``benchmarks/RESULTS.md`` section 13).
ACTIVATIONS = {jax.nn.relu: 1, jax.nn.relu6: 2}


def _batch_norm_call(
    target: str, x: Array, operands: tuple[Array, ...], epsilon: float, activation_code: int
) -> tuple[Array, Array, Array]:
    """Both BatchNorm kernels take ``x`` (M, C) first and return an (M, C) array and two (C,)
    vectors, with the same two attributes."""
    m, c = x.shape
    vec = jax.ShapeDtypeStruct((c,), jnp.float32)
    call = jax.ffi.ffi_call(
        target, (jax.ShapeDtypeStruct((m, c), jnp.float32), vec, vec), vmap_method="sequential"
    )
    return call(x, *operands, eps=np.float32(epsilon), act=np.int64(activation_code))


def batch_norm_forward(
    x: Array, scale: Array, bias: Array, epsilon: float, activation_code: int
) -> tuple[Array, Array, Array]:
    """``(y, mean, raw_var)`` for float32 ``x`` of shape (M, C): the per-channel batch mean and
    ``E[x^2] - E[x]^2`` (summed in float64, not clipped), and
    ``y = act((x - mean) * scale * rsqrt(max(raw_var, 0) + epsilon) + bias)`` with the activation
    of :data:`ACTIVATIONS` code ``activation_code``. Not differentiable by itself
    (``csr_jax.models.batch_norm`` gives it a custom VJP)."""
    return _batch_norm_call(
        "csr_jax_batch_norm_forward", x, (scale, bias), epsilon, activation_code
    )


def batch_norm_backward(
    x: Array,
    g_y: Array,
    mean: Array,
    raw_var: Array,
    scale: Array,
    bias: Array,
    g_mean: Array,
    g_var: Array,
    epsilon: float,
    activation_code: int,
) -> tuple[Array, Array, Array]:
    """``(dx, sum_g, sum_gc)``: the input gradient of :func:`batch_norm_forward` for the
    cotangents ``g_y`` (of y), ``g_mean`` and ``g_var`` (of the statistics), and the two
    per-channel sums the parameter gradients are made of, ``sum_g = sum(g)`` and
    ``sum_gc = sum(g * (x - mean))``, where ``g`` is ``g_y`` through the activation's gradient."""
    return _batch_norm_call(
        "csr_jax_batch_norm_backward",
        x,
        (g_y, mean, raw_var, scale, bias, g_mean, g_var),
        epsilon,
        activation_code,
    )


def pointwise_csr_forward(
    x: Array,
    u: Array,
    v: Array,
    bu: Array,
    bv: Array,
    alpha: Array,
    beta: Array,
    steps: int,
    c_out: int,
) -> tuple[Array, Array]:
    """``(y, r)``: a whole 1x1 CSR layer with ``steps`` T >= 2 on float32 ``x`` of shape (P, C_in)
    (pixels, channels): ``u`` (g_in, g_out), ``v`` (g_out, g_out), biases ``bu``/``bv`` (g_out,)
    (zeros for none), ``alpha``/``beta`` of shape (1,). ``y`` (P, c_out) is the layer's output
    (docs/csr_conv.md sections 2-5). ``r`` (P, (T-2) g_out) holds the hidden terms r_3 .. r_T,
    which :func:`pointwise_csr_backward` reads back (it recomputes r_2 = x_1 U V + ...). Not
    differentiable by itself (``csr_jax.pointwise_native`` gives it a custom VJP)."""
    p, g = x.shape[0], u.shape[1]
    call = jax.ffi.ffi_call(
        "csr_jax_pointwise_csr_forward",
        (
            jax.ShapeDtypeStruct((p, c_out), jnp.float32),
            jax.ShapeDtypeStruct((p, (steps - 2) * g), jnp.float32),
        ),
        vmap_method="sequential",
    )
    return call(x, u, v, bu, bv, alpha, beta, steps=np.int64(steps))


def pointwise_csr_backward(
    x: Array,
    u: Array,
    v: Array,
    bu: Array,
    bv: Array,
    alpha: Array,
    beta: Array,
    y: Array,
    r: Array,
    dy: Array,
    steps: int,
) -> tuple[Array, ...]:
    """``(dx, du, dv, dbu, dbv, dalpha, dbeta)``: the gradients of :func:`pointwise_csr_forward`'s
    ``y`` for the cotangent ``dy``, given its operands and its two results."""
    f32 = functools.partial(jax.ShapeDtypeStruct, dtype=jnp.float32)
    call = jax.ffi.ffi_call(
        "csr_jax_pointwise_csr_backward",
        tuple(f32(a.shape) for a in (x, u, v, bu, bv, alpha, beta)),
        vmap_method="sequential",
    )
    return call(x, u, v, bu, bv, alpha, beta, y, r, dy, steps=np.int64(steps))
