"""The rollup partials' binary COPY stream is PostgreSQL's format, value for value."""

import struct

import numpy as np

from processors.rollups import binary_copy


def test_binary_copy_writes_each_row_as_field_count_then_length_prefixed_big_endian_values() -> None:
    cols = [np.array([1, -2], np.int64), np.array([3, 4], np.int64), np.array([2.5, np.nan])]
    out = binary_copy(cols, (">i8", ">i2", ">f8"))
    expected = b"PGCOPY\n\xff\r\n\x00" + struct.pack(">ii", 0, 0)
    for a, b, c in zip(*cols, strict=True):
        expected += struct.pack(">hiqihid", 3, 8, a, 2, b, 8, c)
    expected += struct.pack(">h", -1)
    assert out[: len(expected) - 10] == expected[:-10]  # NaN payload bits aside
    assert len(out) == len(expected)
    assert np.isnan(struct.unpack(">d", out[-10:-2])[0])


def test_binary_copy_of_no_rows_is_header_and_trailer() -> None:
    assert binary_copy([np.array([], np.int64)], (">i8",)) == b"PGCOPY\n\xff\r\n\x00" + bytes(8) + b"\xff\xff"
