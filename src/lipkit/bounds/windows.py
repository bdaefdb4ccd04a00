"""How many sliding windows read one input entry: the multiplicity behind pooling bounds, the bounds of
l_inf-distance convolutions and the gradient sensitivity of convolutions.

For one spatial dimension, input index ``i`` is read by output ``o`` at tap ``a`` when
``o s + a d - pad = i`` (stride ``s``, dilation ``d``, left padding ``pad``).  The count is exact when the
input length is known (torch's output length, ``ceil_mode`` included, or the one a caller measured);
without it, the largest count over all residues ``i + pad mod s``, which no input length exceeds.  In
several dimensions the windows are products, so the counts multiply.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["max_window_cover", "output_length"]


def output_length(n: int, k: int, s: int, pad: int, dil: int = 1, ceil_mode: bool = False) -> int:
    """torch's output length of a pooling / convolution dimension with symmetric padding ``pad``."""
    span = dil * (k - 1) + 1
    num = n + 2 * pad - span
    if num < 0:
        return 0
    out = (-(-num // s) if ceil_mode else num // s) + 1
    if ceil_mode and (out - 1) * s >= n + pad:
        out -= 1
    return out


def _cover_1d(k: int, s: int, d: int, pad: int, n: int | None, n_out: int | None) -> int:
    if n is None or n_out is None:
        return max(sum(1 for a in range(k) if (a * d - r) % s == 0) for r in range(s))
    counts = [0] * n
    for o in range(n_out):
        for a in range(k):
            i = o * s - pad + a * d
            if 0 <= i < n:
                counts[i] += 1
    return max(counts, default=0)


def max_window_cover(kernel: Sequence[int], stride: Sequence[int], dilation: Sequence[int],
                     padding: Sequence[int], size: Sequence[int] | None = None, *,
                     out_size: Sequence[int] | None = None, ceil_mode: bool = False) -> int:
    """The largest number of windows (output positions) that read one input entry (at least 1).

    Args:
        kernel, stride, dilation, padding: per spatial dimension (``padding``: the left padding).
        size: the input's spatial size; None: a bound valid for every size.
        out_size: the output's spatial size if the caller knows it (e.g. asymmetric "same" padding);
            otherwise computed with :func:`output_length` (symmetric padding, ``ceil_mode``).
    """
    total = 1
    for j, (k, s, d, pad) in enumerate(zip(kernel, stride, dilation, padding, strict=True)):
        n = None if size is None else int(size[j])
        if n is None:
            n_out = None
        elif out_size is not None:
            n_out = int(out_size[j])
        else:
            n_out = output_length(n, k, s, pad, d, ceil_mode)
        total *= max(_cover_1d(k, s, d, pad, n, n_out), 1)
    return total
