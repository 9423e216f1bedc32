"""Reading and writing the IDX format of MNIST / Fashion-MNIST files, gzipped or not (SPEC §5).

An IDX file is: two zero bytes, a dtype code, the number of dimensions, one big-endian uint32 per dimension,
then exactly prod(dims) big-endian items. Labels files are 0x00000801 (uint8, 1-D), images 0x00000803
(uint8, 3-D).
"""

from __future__ import annotations

import gzip as _gzip
import math
import struct
import zlib
from pathlib import Path

import numpy as np

from lesion.errors import LesionError

#: IDX dtype code -> big-endian numpy dtype.
IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}

_GZIP_MAGIC = b"\x1f\x8b"


def _read_bytes(path: Path) -> bytes:
    """The file's content, decompressed when it starts with the gzip magic bytes (whatever its name)."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise LesionError(f"IDX file {path} does not exist; check the path") from None
    except OSError as exc:
        raise LesionError(f"cannot read IDX file {path}: {exc}") from None
    if raw[:2] != _GZIP_MAGIC:
        return raw
    try:
        return _gzip.decompress(raw)
    except (EOFError, OSError, zlib.error) as exc:
        raise LesionError(f"IDX file {path} is a corrupt or truncated gzip file ({exc}); "
                          "download it again") from None


def read_idx(path: str | Path) -> np.ndarray:
    """Read one IDX file (gzip detected by its magic bytes 1f 8b) into a native-endian numpy array.

    Checks the magic number (two zero bytes, a known dtype code, a dimension count), the dimensions and that
    the payload holds exactly the declared number of items. Any mismatch raises `LesionError` naming the file.
    """
    path = Path(path).expanduser()
    data = _read_bytes(path)
    if len(data) < 4:
        raise LesionError(f"IDX file {path} is truncated: {len(data)} bytes, too short for the 4-byte "
                          "magic number")
    zero0, zero1, code, ndim = data[0], data[1], data[2], data[3]
    if zero0 != 0 or zero1 != 0 or code not in IDX_DTYPES:
        raise LesionError(f"{path} is not an IDX file: magic number 0x{data[:4].hex()} (expected 0x0000TTNN "
                          f"with type code TT in {', '.join(f'0x{c:02X}' for c in IDX_DTYPES)}); "
                          "give an MNIST-style IDX file")
    if ndim == 0:
        raise LesionError(f"IDX file {path} declares 0 dimensions; an IDX array needs at least one")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise LesionError(f"IDX file {path} is truncated: the header declares {ndim} dimensions but the "
                          f"file has only {len(data)} bytes")
    dims = struct.unpack(f">{ndim}I", data[4:header])
    dtype = IDX_DTYPES[code]
    expected = math.prod(dims) * dtype.itemsize  # Python ints: a product of big dims must not wrap to 0
    payload = len(data) - header
    if payload != expected:
        what = "truncated" if payload < expected else "longer than declared"
        raise LesionError(f"IDX file {path} is {what}: dimensions {dims} of {dtype.name} need {expected} "
                          f"bytes of data, found {payload}; download the file again")
    array = np.frombuffer(data, dtype=dtype, offset=header).reshape(dims)
    return array.astype(dtype.newbyteorder("="), copy=True)


def write_idx(path: str | Path, array: np.ndarray, gzip: bool = False) -> Path:
    """Write `array` as an IDX file (big-endian; gzip-compressed when `gzip`), the inverse of `read_idx`.

    The dtype must be one the IDX format knows: uint8, int8, int16, int32, float32 or float64.
    """
    array = np.asarray(array)
    matches = [(c, d) for c, d in IDX_DTYPES.items()
               if array.dtype.kind == d.kind and array.dtype.itemsize == d.itemsize]
    if not matches:
        raise LesionError(f"IDX cannot store dtype {array.dtype}; use uint8, int8, int16, int32, float32 "
                          "or float64")
    code, dtype = matches[0]
    if array.ndim == 0 or array.ndim > 255:
        raise LesionError(f"IDX stores arrays of 1 to 255 dimensions, got {array.ndim}")
    header = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    content = header + np.ascontiguousarray(array, dtype=dtype).tobytes()
    path = Path(path).expanduser()
    path.write_bytes(_gzip.compress(content) if gzip else content)
    return path
