"""Bit packing of integer codes and bitmasks: exact round trips, known layouts, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from compactbert.export.bits import pack_bits, pack_mask, packed_nbytes, unpack_bits, unpack_mask


@pytest.mark.parametrize("bits", [1, 2, 3, 4, 5, 6, 7, 8])
@pytest.mark.parametrize("n", [0, 1, 3, 7, 9, 1001])
def test_round_trip_random_codes(bits, n):
    g = torch.Generator().manual_seed(bits * 1000 + n)
    codes = torch.randint(0, 2**bits, (n,), generator=g, dtype=torch.uint8)
    packed = pack_bits(codes, bits)
    assert packed.dtype == torch.uint8
    assert packed.numel() == packed_nbytes(n, bits) == (n * bits + 7) // 8
    assert torch.equal(unpack_bits(packed, bits, n), codes)


@pytest.mark.parametrize("bits", [1, 2, 4, 8])
def test_round_trip_matrix_in_row_major_order(bits):
    g = torch.Generator().manual_seed(bits)
    codes = torch.randint(0, 2**bits, (37, 13), generator=g)  # int64 input, odd sizes
    back = unpack_bits(pack_bits(codes, bits), bits, codes.numel()).reshape(37, 13)
    assert torch.equal(back.long(), codes)


def test_known_layouts_are_little_endian_within_bytes():
    # 2 bits: codes 0,1,2,3 -> 0b11_10_01_00 = 228; the 5th code (3) starts the next byte
    assert pack_bits(torch.tensor([0, 1, 2, 3, 3]), 2).tolist() == [228, 3]
    # 1 bit: first code is the least significant bit
    assert pack_bits(torch.tensor([1, 0, 0, 0, 0, 0, 0, 0, 1]), 1).tolist() == [1, 1]
    # 4 bits: low nibble first
    assert pack_bits(torch.tensor([0xA, 0x5, 0xF]), 4).tolist() == [0x5A, 0x0F]
    # 3 bits: a bit stream, 8 codes in 3 bytes
    codes = torch.tensor([7, 0, 7, 0, 7, 0, 7, 0])
    stream = np.array([[1, 1, 1], [0, 0, 0]] * 4).reshape(-1)
    assert pack_bits(codes, 3).tolist() == np.packbits(stream, bitorder="little").tolist()
    # 8 bits: the bytes themselves
    assert pack_bits(torch.tensor([0, 255, 17]), 8).tolist() == [0, 255, 17]


def test_numpy_input_and_signed_dtypes_in_range():
    codes = np.array([3, 1, 0, 2], dtype=np.int16)
    assert unpack_bits(pack_bits(codes, 2), 2, 4).tolist() == [3, 1, 0, 2]


@pytest.mark.parametrize("codes,bits", [([4], 2), ([-1], 8), ([256], 8), ([2], 1)])
def test_codes_out_of_range_are_rejected(codes, bits):
    with pytest.raises(ValueError, match="must lie in"):
        pack_bits(torch.tensor(codes), bits)


@pytest.mark.parametrize("bits", [0, 9, 16])
def test_unsupported_width(bits):
    with pytest.raises(ValueError, match="not supported"):
        pack_bits(torch.tensor([0]), bits)


def test_truncated_stream_is_rejected():
    packed = pack_bits(torch.zeros(10, dtype=torch.uint8), 4)  # 5 bytes
    with pytest.raises(ValueError, match="need 5 bytes"):
        unpack_bits(packed[:4], 4, 10)


def test_float_codes_are_rejected():
    with pytest.raises(ValueError, match="integer"):
        pack_bits(torch.tensor([0.0, 1.0]), 1)


@pytest.mark.parametrize("shape", [(1,), (8,), (3, 7), (5, 1, 9), (0, 4)])
def test_mask_round_trip(shape):
    g = torch.Generator().manual_seed(sum(shape) + len(shape))
    mask = torch.rand(shape, generator=g) > 0.5
    packed = pack_mask(mask)
    n = int(np.prod(shape))
    assert packed.numel() == (n + 7) // 8
    back = unpack_mask(packed, shape)
    assert back.dtype == torch.bool and torch.equal(back, mask)


def test_mask_known_bytes_and_float_masks():
    m = torch.tensor([[1.0, 0.0, 1.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])  # row-major bits 1,0,1,1,0,0,0,0,1
    assert pack_mask(m).tolist() == [0b00001101, 0b00000001]
    assert torch.equal(unpack_mask(pack_mask(m), (3, 3)), m.bool())
    with pytest.raises(ValueError, match="needs 2 bytes"):
        unpack_mask(pack_mask(m)[:1], (3, 3))
