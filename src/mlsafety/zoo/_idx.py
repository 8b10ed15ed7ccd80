"""The IDX file format (LeCun et al., the MNIST distribution format), read and written.

An IDX file is a 4-byte magic number, ``00 00 <type> <ndim>``, then ``ndim`` big-endian uint32 sizes, then
the values in row-major order, big-endian. Types: ``0x08`` uint8, ``0x09`` int8, ``0x0B`` int16,
``0x0C`` int32, ``0x0D`` float32, ``0x0E`` float64. MNIST and Fashion-MNIST ship gzip-compressed IDX files;
:func:`read_idx` takes either (a gzip file is recognised by its own magic bytes, not by its name).
"""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np

from mlsafety.core import InputError

IDX_TYPES: dict[int, str] = {0x08: "u1", 0x09: "i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
"""IDX type codes and the NumPy dtypes they hold (big-endian)."""

_GZIP_MAGIC = b"\x1f\x8b"


def _raw_bytes(path: Path) -> bytes:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise InputError(f"IDX file {path} does not exist; check the path") from None
    except OSError as e:
        raise InputError(f"cannot read IDX file {path} ({e.strerror}); check its permissions") from None
    if raw[:2] != _GZIP_MAGIC:
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as e:
        raise InputError(f"IDX file {path} is a damaged gzip file ({e}); fetch or reinstall it") from None


def read_idx(path: str | Path, *, dtype: str | None = None, ndim: int | None = None) -> np.ndarray:
    """The array held by an IDX file (plain or gzip-compressed), in native byte order.

    Args:
        path: the file.
        dtype: the NumPy dtype the file must hold (``"uint8"`` for MNIST-style images and labels);
            None accepts any IDX type.
        ndim: the number of dimensions the file must have; None accepts any.

    Raises:
        InputError: a missing or unreadable file, a damaged gzip stream, a bad magic number, an
            unknown type code, another dtype or ``ndim`` than asked, or a size that disagrees with the
            header (a truncated or padded file): one line naming the file and the problem.
    """
    path = Path(path)
    data = _raw_bytes(path)
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise InputError(
            f"{path} is not an IDX file (its magic number must start with two zero bytes); "
            "give an MNIST-style .idx or .idx.gz file"
        )
    code, dims = data[2], data[3]
    if code not in IDX_TYPES:
        known = ", ".join(f"0x{c:02X}" for c in IDX_TYPES)
        raise InputError(f"{path} has the unknown IDX type code 0x{code:02X}; IDX types are {known}")
    kind = np.dtype(IDX_TYPES[code])
    if dtype is not None and kind.newbyteorder("=") != np.dtype(dtype):
        raise InputError(f"{path} holds {kind.name} values, expected {np.dtype(dtype).name}")
    if ndim is not None and dims != ndim:
        raise InputError(f"{path} has {dims} dimensions, expected {ndim}")
    header = 4 + 4 * dims
    if len(data) < header:
        raise InputError(f"{path} ends inside its IDX header ({len(data)} bytes); the file is truncated")
    shape = tuple(int(s) for s in np.frombuffer(data, dtype=">u4", count=dims, offset=4))
    expected = header + int(np.prod(shape, dtype=np.int64)) * kind.itemsize
    if len(data) != expected:
        what = "truncated" if len(data) < expected else "longer than its header says"
        raise InputError(f"{path} is {what}: shape {shape} of {kind.name} needs {expected} bytes, found {len(data)}")
    values = np.frombuffer(data, dtype=kind, offset=header).reshape(shape)
    return values.astype(kind.newbyteorder("="), copy=True)


def write_idx(path: str | Path, array: np.ndarray, *, compress: bool | None = None) -> Path:
    """Write ``array`` as an IDX file (gzip-compressed when ``compress`` or, when None, the name ends in ``.gz``).

    Raises:
        InputError: a dtype IDX cannot hold.
    """
    path = Path(path)
    codes = {np.dtype(v).newbyteorder("="): k for k, v in IDX_TYPES.items()}
    kind = np.dtype(array.dtype).newbyteorder("=")
    if kind not in codes:
        raise InputError(f"IDX cannot hold {array.dtype} values; use uint8, int8, int16, int32, float32 or float64")
    if array.ndim > 255:
        raise InputError(f"IDX holds at most 255 dimensions, not {array.ndim}")
    header = bytes([0, 0, codes[kind], array.ndim]) + np.asarray(array.shape, dtype=">u4").tobytes()
    body = np.ascontiguousarray(array, dtype=np.dtype(IDX_TYPES[codes[kind]])).tobytes()
    raw = header + body
    if compress or (compress is None and path.suffix == ".gz"):
        raw = gzip.compress(raw, mtime=0)
    path.write_bytes(raw)
    return path
