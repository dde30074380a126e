"""Numbers inside numba kernels: bfloat16 storage, and zeros and constants of the values' dtype.

Chapter: book/fast/sparse_ffn

numba has no bfloat16: a bf16 array reaches a kernel as its 16 bits (a uint16 view), and
:func:`value` widens each element to float32 in registers (bf16 is the top half of a float32);
:func:`stored` rounds a result back to the nearest bf16, ties to even, as torch does. Every
accumulator starts at :func:`zero` of the values' dtype and every constant is converted with
:func:`like`: numba types ``float32 * int`` (a literal ``0``) as float64, and a float64
accumulator halves the SIMD width of the loop (NumPy >= 2 keeps float32 for a Python int scalar;
numba does not). These functions are called only inside ``@numba.njit`` code: each is a stub for
Python and a numba overload that is inlined.
"""

from __future__ import annotations

from llvmlite import ir
from numba.core import types
from numba.extending import intrinsic, overload

__all__ = ["bf16_to_f32", "f32_bits", "value", "zero", "stored", "like"]


@intrinsic
def bf16_to_f32(typingctx, bits):
    """bfloat16 is the top half of a float32: ``f32 = bitcast(uint32(bits) << 16)``."""
    if bits != types.uint16:
        return None

    def codegen(context, builder, signature, args):
        wide = builder.zext(args[0], ir.IntType(32))
        return builder.bitcast(builder.shl(wide, ir.Constant(ir.IntType(32), 16)), ir.FloatType())
    return types.float32(bits), codegen


@intrinsic
def f32_bits(typingctx, value):
    """The 32 bits of a float32 as a uint32 (``bitcast``)."""
    if value != types.float32:
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.IntType(32))
    return types.uint32(value), codegen


def value(x):  # pragma: no cover - only its numba overload below is ever called
    """A stored weight as a number: floats as they are, bf16 bits (uint16) widened to float32."""
    raise NotImplementedError


@overload(value, inline="always")
def value_overload(x):
    if isinstance(x, types.Float):
        return lambda x: x
    if x == types.uint16:
        return lambda x: bf16_to_f32(x)
    return None


def zero(a):  # pragma: no cover - only its numba overload below is ever called
    """Zero in the accumulation dtype of ``a``'s values: float32 for bf16 bits, else their own."""
    raise NotImplementedError


@overload(zero, inline="always")
def zero_overload(a):
    # A literal ``0`` would not do: numba types it as int64 and float32 * int64 as float64, and a
    # float64 accumulator halves the vector width (measured, one thread, 8 MiB of bf16 rows in
    # L3: row_gemv at 17 GB/s with the literal, 44 GB/s with this zero).
    if not isinstance(a, types.Array):
        return None
    acc = types.float32 if a.dtype == types.uint16 else a.dtype
    return (lambda a: acc(0)) if isinstance(acc, types.Float) else None


def stored(value, out):  # pragma: no cover - only its numba overload below is ever called
    """``value`` as an element of the array ``out``: cast to its float type, or for bf16 bits
    (uint16) rounded to the nearest bfloat16, ties to even, as torch's ``.to(torch.bfloat16)``."""
    raise NotImplementedError


@overload(stored, inline="always")
def stored_overload(value, out):
    if not isinstance(out, types.Array):
        return None
    if out.dtype == types.uint16:
        def to_bf16(value, out):
            v = types.float32(value)
            if v != v:
                return types.uint16(0x7FC0)  # NaN
            bits = f32_bits(v)
            return types.uint16((bits + types.uint32(0x7FFF) + ((bits >> 16) & 1)) >> 16)
        return to_bf16
    float_type = out.dtype
    return (lambda value, out: float_type(value)) if isinstance(float_type, types.Float) else None


def like(value, ref):  # pragma: no cover - only its numba overload below is ever called
    """``value`` converted to the float type of ``ref`` (float literals would promote to float64)."""
    raise NotImplementedError


@overload(like, inline="always")
def like_overload(value, ref):
    if not isinstance(ref, types.Float):
        return None
    float_type = ref
    return lambda value, ref: float_type(value)

