"""Bit packing of small unsigned integer codes into bytes, and bitmasks for sparsity.

Codes of ``bits`` bits (1..8) are stored back to back, little-endian inside each byte: code ``i``
occupies bits ``i * bits .. i * bits + bits - 1`` of the stream, bit 0 of a byte being its least
significant bit. So at 2 bits, byte ``j`` holds codes ``4j .. 4j + 3`` with code ``4j`` in the two
lowest bits. The stream is padded with zero bits to a whole byte: ``n`` codes take
``ceil(n * bits / 8)`` bytes (:func:`packed_nbytes`).

Widths 1, 2, 4 and 8 (which divide a byte) use shifts on a ``(n_bytes, codes_per_byte)`` view;
3, 5, 6 and 7 go through a bit stream (``numpy.unpackbits`` / ``packbits``). Everything is
vectorised; the round trip is exact.

Bitmasks (:func:`pack_mask` / :func:`unpack_mask`) are 1 bit per element in the same order
(``numpy.packbits(..., bitorder="little")`` of the flattened mask).

Example::

    codes = torch.tensor([0, 1, 2, 3, 3], dtype=torch.uint8)
    packed = pack_bits(codes, 2)          # tensor([228, 3], dtype=torch.uint8)
    assert torch.equal(unpack_bits(packed, 2, 5), codes)
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["pack_bits", "unpack_bits", "pack_mask", "unpack_mask", "packed_nbytes", "SUPPORTED_BITS"]

SUPPORTED_BITS = (1, 2, 3, 4, 5, 6, 7, 8)


def _check_bits(bits: int) -> int:
    if isinstance(bits, bool) or not isinstance(bits, (int, np.integer)) or int(bits) not in SUPPORTED_BITS:
        raise ValueError(f"bits={bits!r} is not supported; valid: integers 1..8")
    return int(bits)


def packed_nbytes(n: int, bits: int) -> int:
    """Bytes that ``n`` codes of ``bits`` bits take once packed: ``ceil(n * bits / 8)``."""
    return (int(n) * _check_bits(bits) + 7) // 8


def _as_numpy_u8(codes: torch.Tensor | np.ndarray) -> np.ndarray:
    if isinstance(codes, torch.Tensor):
        codes = codes.detach().cpu()
        if codes.dtype not in (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64, torch.bool):
            raise ValueError(f"codes must be an integer tensor, got {codes.dtype}")
        codes = codes.reshape(-1).to(torch.int64).numpy()
    codes = np.asarray(codes).reshape(-1)
    if codes.dtype.kind not in "iub":
        raise ValueError(f"codes must be integers, got {codes.dtype}")
    return codes


def pack_bits(codes: torch.Tensor | np.ndarray, bits: int) -> torch.Tensor:
    """Pack unsigned integer codes (any shape, flattened row-major) into a 1-D ``uint8`` tensor.

    Args:
        codes: Integer codes, each in ``[0, 2**bits - 1]``.
        bits: Width of one code, 1..8.

    Returns:
        ``uint8`` tensor of :func:`packed_nbytes` ``(codes.numel(), bits)`` bytes.

    Raises:
        ValueError: a code outside ``[0, 2**bits - 1]`` or an unsupported width.
    """
    bits = _check_bits(bits)
    flat = _as_numpy_u8(codes)
    n = flat.size
    if n and (int(flat.min()) < 0 or int(flat.max()) >= (1 << bits)):
        raise ValueError(
            f"codes must lie in [0, {(1 << bits) - 1}] to be packed at {bits} bits, "
            f"got range [{int(flat.min())}, {int(flat.max())}]"
        )
    flat = flat.astype(np.uint8)
    if bits == 8:
        return torch.from_numpy(flat.copy())
    if 8 % bits == 0:
        per = 8 // bits  # codes per byte
        nbytes = (n + per - 1) // per
        padded = np.zeros(nbytes * per, dtype=np.uint8)
        padded[:n] = flat
        grid = padded.reshape(nbytes, per)  # (n_bytes, codes_per_byte)
        shifts = (np.arange(per, dtype=np.uint8) * bits)[None, :]  # (1, codes_per_byte)
        out = np.bitwise_or.reduce(grid << shifts, axis=1).astype(np.uint8)
        return torch.from_numpy(out)
    # 3, 5, 6, 7 bits: through a bit stream (n, 8) -> (n, bits) -> packbits.
    stream = np.unpackbits(flat[:, None], axis=1, bitorder="little")[:, :bits]  # (n, bits)
    out = np.packbits(stream.reshape(-1), bitorder="little")
    return torch.from_numpy(out)


def unpack_bits(packed: torch.Tensor | np.ndarray, bits: int, n: int) -> torch.Tensor:
    """Inverse of :func:`pack_bits`: the first ``n`` codes as a 1-D ``uint8`` tensor.

    Raises:
        ValueError: ``packed`` is shorter than ``n`` codes need (a truncated tensor).
    """
    bits = _check_bits(bits)
    if isinstance(packed, torch.Tensor):
        packed = packed.detach().cpu().reshape(-1).numpy()
    buf = np.asarray(packed, dtype=np.uint8).reshape(-1)
    need = packed_nbytes(n, bits)
    if buf.size < need:
        raise ValueError(f"{n} codes of {bits} bits need {need} bytes, got {buf.size}")
    if n == 0:
        return torch.zeros(0, dtype=torch.uint8)
    buf = buf[:need]
    if bits == 8:
        return torch.from_numpy(buf.copy())
    if 8 % bits == 0:
        per = 8 // bits
        shifts = (np.arange(per, dtype=np.uint8) * bits)[None, :]  # (1, codes_per_byte)
        grid = (buf[:, None] >> shifts) & np.uint8((1 << bits) - 1)  # (n_bytes, codes_per_byte)
        return torch.from_numpy(np.ascontiguousarray(grid.reshape(-1)[:n]))
    stream = np.unpackbits(buf, bitorder="little")[: n * bits].reshape(n, bits)  # (n, bits)
    weights = (1 << np.arange(bits, dtype=np.uint16)).astype(np.uint16)  # (bits,)
    codes = (stream.astype(np.uint16) * weights[None, :]).sum(axis=1).astype(np.uint8)
    return torch.from_numpy(codes)


def pack_mask(mask: torch.Tensor | np.ndarray) -> torch.Tensor:
    """A boolean (or 0/1) mask of any shape as a 1-D ``uint8`` bitmask of ``ceil(numel / 8)`` bytes."""
    if isinstance(mask, torch.Tensor):
        mask = (mask.detach().cpu() != 0).reshape(-1).numpy()
    flat = np.asarray(mask).reshape(-1) != 0
    return torch.from_numpy(np.packbits(flat, bitorder="little"))


def unpack_mask(packed: torch.Tensor | np.ndarray, shape: tuple[int, ...] | torch.Size) -> torch.Tensor:
    """Inverse of :func:`pack_mask`: a ``torch.bool`` tensor of ``shape``.

    Raises:
        ValueError: ``packed`` is shorter than ``shape`` needs.
    """
    shape = tuple(int(s) for s in shape)
    n = int(np.prod(shape)) if shape else 1
    if isinstance(packed, torch.Tensor):
        packed = packed.detach().cpu().reshape(-1).numpy()
    buf = np.asarray(packed, dtype=np.uint8).reshape(-1)
    if buf.size < (n + 7) // 8:
        raise ValueError(f"a mask of shape {shape} needs {(n + 7) // 8} bytes, got {buf.size}")
    bits = np.unpackbits(buf, bitorder="little", count=n).astype(bool)
    return torch.from_numpy(bits.reshape(shape))
