"""A validating, memory-mapped GGUF (v2/v3) reader.

Layout of a GGUF file (little-endian):

    magic "GGUF" | u32 version | u64 tensor_count | u64 kv_count
    kv_count x (string key | u32 value_type | value)
    tensor_count x (string name | u32 n_dims | n_dims x u64 dim | u32 ggml_type | u64 offset)
    padding to `general.alignment` (default 32) | data section (tensor offsets are relative to it)

A string is a u64 byte length followed by UTF-8 bytes; an array is u32 element type, u64 count,
then the elements. Dimensions are stored innermost first.

Everything is checked against the file size before it is used: every count, length and
offset is compared with the bytes that remain (as byte sizes, before any padding), so a damaged
or hostile file raises :class:`pyllm.ModelFormatError` naming the file and the field, and never
makes the reader allocate, loop or read according to a size the file cannot back. The header is
parsed here rather than by the `gguf` package's reader, which raises IndexError/KeyError on
damaged files and loops on nested arrays.

Tensor data is never copied: :meth:`GGUFFile.raw` returns a torch view over a private
(copy-on-write) memory map of the file. The views keep the map alive.
"""

from __future__ import annotations

import itertools
import math
import mmap
import os
import struct
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pyllm.errors import ModelFormatError
from pyllm.weights import quant

GGUF_MAGIC = b"GGUF"
SUPPORTED_VERSIONS = (2, 3)
DEFAULT_ALIGNMENT = 32
MAX_DIMS = 4
MAX_ARRAY_DEPTH = 3  # arrays of arrays of arrays; deeper nesting is refused
MAX_KEY_BYTES = 65535
MAX_ALIGNMENT = 1 << 20
INT64_MAX = (1 << 63) - 1

# GGUF metadata value types.
UINT8, INT8, UINT16, INT16, UINT32, INT32, FLOAT32, BOOL, STRING, ARRAY, UINT64, INT64, FLOAT64 = (
    range(13)
)
VALUE_TYPE_NAMES = {
    UINT8: "uint8",
    INT8: "int8",
    UINT16: "uint16",
    INT16: "int16",
    UINT32: "uint32",
    INT32: "int32",
    FLOAT32: "float32",
    BOOL: "bool",
    STRING: "string",
    ARRAY: "array",
    UINT64: "uint64",
    INT64: "int64",
    FLOAT64: "float64",
}
_SCALARS: dict[int, struct.Struct] = {
    UINT8: struct.Struct("<B"),
    INT8: struct.Struct("<b"),
    UINT16: struct.Struct("<H"),
    INT16: struct.Struct("<h"),
    UINT32: struct.Struct("<I"),
    INT32: struct.Struct("<i"),
    FLOAT32: struct.Struct("<f"),
    BOOL: struct.Struct("<B"),
    UINT64: struct.Struct("<Q"),
    INT64: struct.Struct("<q"),
    FLOAT64: struct.Struct("<d"),
}
_NP_DTYPES = {
    UINT8: "<u1",
    INT8: "<i1",
    UINT16: "<u2",
    INT16: "<i2",
    UINT32: "<u4",
    INT32: "<i4",
    FLOAT32: "<f4",
    BOOL: "<u1",
    UINT64: "<u8",
    INT64: "<i8",
    FLOAT64: "<f8",
}
_INT_TYPES = frozenset({UINT8, INT8, UINT16, INT16, UINT32, INT32, UINT64, INT64})
_FLOAT_TYPES = frozenset({FLOAT32, FLOAT64})
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
# Smallest encodings, used to bound counts by the bytes left: a string is at least its u64
# length; an array at least its u32 type and u64 count; a kv pair at least a key length, a
# value type and a one-byte value; a tensor info at least a name length, n_dims, type, offset.
_MIN_STRING = 8
_MIN_ARRAY = 12
_MIN_KV = 8 + 4 + 1
_MIN_TENSOR_INFO = 8 + 4 + 4 + 8

# Types the kernels compute on: the targets .weight() converts other types to.
KERNEL_QTYPES = frozenset(quant.QTYPE_CODES)
# Types .weight() keeps as stored (memory-mapped): KERNEL_QTYPES plus the block types with CPU
# kernels of their own (Q5_0, Q5_1, Q4_K, Q5_K, Q6_K: exact and int8, AVX2 and portable, and the
# fused runner takes them). PYLLM_NATIVE_KQUANTS=0 converts the latter to Q8_0 at load instead
# (twice their memory; the way to compare against the conversion older versions always did).
NATIVE_QTYPES = frozenset(quant.OP_QTYPE_CODES)
NATIVE_KQUANTS_ENV = "PYLLM_NATIVE_KQUANTS"


def kept_qtypes() -> frozenset[str]:
    """The types .weight() returns as stored: every type a CPU kernel computes on, or only the
    KERNEL_QTYPES with PYLLM_NATIVE_KQUANTS=0."""
    return KERNEL_QTYPES if os.environ.get(NATIVE_KQUANTS_ENV) == "0" else NATIVE_QTYPES


@dataclass(frozen=True)
class TensorInfo:
    """One tensor of a GGUF file.

    shape is in torch order (GGUF dims reversed): a matrix stored as [cols, rows] is (rows,
    cols). offset is the absolute byte offset in the file; nbytes the bytes it occupies.
    """

    name: str
    ggml_type: int
    type_name: str
    shape: tuple[int, ...]
    offset: int
    nbytes: int

    @property
    def n_elements(self) -> int:
        return math.prod(self.shape)


class _Reader:
    """A cursor over the mapped file that checks every read against the file size."""

    def __init__(self, buf: Any, size: int, path: Path):
        self.buf = buf
        self.size = size
        self.pos = 0
        self.path = path

    def fail(self, field: str, problem: str) -> ModelFormatError:
        return ModelFormatError(f"{self.path}: {field}: {problem}")

    @property
    def remaining(self) -> int:
        return self.size - self.pos

    def need(self, n: int, field: str) -> None:
        if n > self.remaining:
            raise self.fail(
                field,
                f"needs {n} bytes at offset {self.pos}, but the file ends "
                f"after {self.remaining} (truncated or corrupt)",
            )

    def unpack(self, s: struct.Struct, field: str) -> Any:
        self.need(s.size, field)
        (v,) = s.unpack_from(self.buf, self.pos)
        self.pos += s.size
        return v

    def u32(self, field: str) -> int:
        return self.unpack(_U32, field)

    def u64(self, field: str) -> int:
        return self.unpack(_U64, field)

    def count(self, field: str, min_item_bytes: int) -> int:
        """A u64 element count, bounded by what the remaining bytes could possibly hold."""
        n = self.u64(field)
        if n > INT64_MAX:
            raise self.fail(
                field, f"count {n} is negative as a signed 64-bit integer ({n - (1 << 64)})"
            )
        if n * min_item_bytes > self.remaining:
            raise self.fail(
                field,
                f"count {n} needs at least {n * min_item_bytes} bytes, but "
                f"only {self.remaining} remain in the file",
            )
        return n

    def string(self, field: str, max_bytes: int | None = None) -> str:
        n = self.u64(field + " (string length)")
        if max_bytes is not None and n > max_bytes:
            raise self.fail(field, f"string length {n} exceeds the limit of {max_bytes} bytes")
        self.need(n, field + " (string bytes)")
        raw = bytes(self.buf[self.pos : self.pos + n])
        self.pos += n
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise self.fail(
                field, f"string is not valid UTF-8 ({e.reason} at byte {e.start})"
            ) from None

    def strings(self, field: str, n: int) -> list[str]:
        """n strings in a row: the vocabulary's ~100k tokens and merges, so this is a tight loop
        (about a third of a whole model load otherwise). Any string it cannot take as is goes
        back through `string`, which names the element and the problem."""
        buf, size, unpack = self.buf, self.size, _U64.unpack_from
        view = memoryview(buf)
        out: list[str] = []
        append = out.append
        pos = self.pos
        for i in range(n):
            if pos + 8 <= size:
                (length,) = unpack(buf, pos)
                end = pos + 8 + length
                if end <= size:
                    try:
                        append(str(view[pos + 8 : end], "utf-8"))
                        pos = end
                        continue
                    except UnicodeDecodeError:
                        pass
            self.pos = pos
            append(self.string(f"{field}[{i}]"))  # raises with the reason
            pos = self.pos
        self.pos = pos
        return out

    def value(self, vtype: int, field: str, depth: int = 0) -> Any:
        if vtype in _SCALARS:
            v = self.unpack(_SCALARS[vtype], field)
            if vtype == BOOL:
                if v not in (0, 1):
                    raise self.fail(field, f"bool value must be 0 or 1, got {v}")
                return bool(v)
            return v
        if vtype == STRING:
            return self.string(field)
        if vtype == ARRAY:
            return self.array(field, depth + 1)
        raise self.fail(field, f"unknown value type {vtype}")

    def array(self, field: str, depth: int) -> Any:
        if depth > MAX_ARRAY_DEPTH:
            raise self.fail(field, f"arrays nested deeper than {MAX_ARRAY_DEPTH} levels")
        etype = self.u32(field + " (array element type)")
        if etype in _SCALARS:
            itemsize = _SCALARS[etype].size
            n = self.count(field + " (array length)", itemsize)
            arr = np.frombuffer(self.buf, dtype=_NP_DTYPES[etype], count=n, offset=self.pos)
            self.pos += n * itemsize
            if etype == BOOL:
                if n and arr.max() > 1:
                    raise self.fail(field, "bool array holds a value other than 0 or 1")
                return arr.astype(bool)
            return arr.astype(arr.dtype.newbyteorder("="))  # a private, native-order copy
        if etype == STRING:
            n = self.count(field + " (array length)", _MIN_STRING)
            return self.strings(field, n)
        if etype == ARRAY:
            n = self.count(field + " (array length)", _MIN_ARRAY)
            return [self.array(f"{field}[{i}]", depth + 1) for i in range(n)]
        raise self.fail(field, f"unknown array element type {etype}")


class GGUFFile:
    """A parsed, validated GGUF file. Use :func:`load_gguf`.

    Attributes: path, version, metadata (key -> value: str/int/float/bool, list[str] for string
    arrays, numpy arrays for numeric arrays, lists for nested arrays), value_types (key -> GGUF
    value type id), tensors (name -> TensorInfo, in file order), alignment, data_offset.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._converted_notice = False
        try:
            with open(self.path, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                if size == 0:
                    raise ModelFormatError(f"{self.path}: magic: the file is empty")
                # Private copy-on-write mapping: writable as far as torch is concerned (no
                # read-only buffer warnings), yet the file is never modified and no page is
                # copied unless someone writes to it.
                self._mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
        except OSError as e:
            raise ModelFormatError(f"{self.path}: cannot open: {e.strerror or e}") from e
        self.size = size
        self._parse()

    # ------------------------------------------------------------------ parsing

    def _parse(self) -> None:
        r = _Reader(self._mm, self.size, self.path)
        r.need(4, "magic")
        magic = bytes(self._mm[0:4])
        if magic != GGUF_MAGIC:
            raise r.fail("magic", f"expected b'GGUF', got {magic!r}: not a GGUF file")
        r.pos = 4
        version = r.u32("version")
        if version not in SUPPORTED_VERSIONS:
            swapped = int.from_bytes(version.to_bytes(4, "little"), "big")
            hint = (
                " (a big-endian GGUF, which is not supported)"
                if swapped in SUPPORTED_VERSIONS
                else ""
            )
            raise r.fail("version", f"GGUF version {version}{hint}; supported: 2 and 3")
        self.version = version
        n_tensors = r.count("tensor_count", _MIN_TENSOR_INFO)
        n_kv = r.count("kv_count", _MIN_KV)

        self.metadata: dict[str, Any] = {}
        self.value_types: dict[str, int] = {}
        for i in range(n_kv):
            key = r.string(f"kv[{i}].key", MAX_KEY_BYTES)
            if not key:
                raise r.fail(f"kv[{i}].key", "empty key")
            if key in self.metadata:
                raise r.fail(key, f"duplicate key (kv[{i}])")
            vtype = r.u32(f"{key} (value type)")
            if vtype not in VALUE_TYPE_NAMES:
                raise r.fail(key, f"unknown value type {vtype}")
            self.metadata[key] = r.value(vtype, key)
            self.value_types[key] = vtype

        self.alignment = self._alignment()
        infos = []
        names: set[str] = set()
        for i in range(n_tensors):
            infos.append(self._tensor_info(r, i, names))
        header_end = r.pos
        self.data_offset = _align_up(header_end, self.alignment)
        data_size = self.size - self.data_offset
        if n_tensors and data_size < 0:
            raise r.fail(
                "data section",
                f"padding to alignment {self.alignment} runs past the end of the file",
            )

        self.tensors: dict[str, TensorInfo] = {}
        spans = []
        for name, gtype, dims, rel, nbytes in infos:
            if rel % self.alignment:
                raise r.fail(
                    f"tensor {name!r} offset",
                    f"{rel} is not a multiple of the alignment {self.alignment}",
                )
            if rel > data_size or nbytes > data_size - rel:
                raise r.fail(
                    f"tensor {name!r} offset",
                    f"data [{rel}, {rel + nbytes}) lies outside the data section of "
                    f"{max(data_size, 0)} bytes",
                )
            spans.append((rel, rel + nbytes, name))
            t = quant.GGML_TYPES[gtype]
            self.tensors[name] = TensorInfo(
                name, gtype, t.name, tuple(reversed(dims)), self.data_offset + rel, nbytes
            )
        spans.sort()
        for (_, end_a, a), (start_b, _, b) in itertools.pairwise(spans):
            if start_b < end_a:
                raise r.fail(f"tensor {b!r} offset", f"its data overlaps tensor {a!r}")

    def _alignment(self) -> int:
        key = "general.alignment"
        if key not in self.metadata:
            return DEFAULT_ALIGNMENT
        a = self.metadata[key]
        if self.value_types[key] not in _INT_TYPES:
            raise ModelFormatError(
                f"{self.path}: {key}: expected an unsigned integer, got "
                f"{VALUE_TYPE_NAMES[self.value_types[key]]}"
            )
        if a < 8 or a > MAX_ALIGNMENT or a & (a - 1) or a % 8:
            raise ModelFormatError(
                f"{self.path}: {key}: {a} is not a power of two between 8 and {MAX_ALIGNMENT}"
            )
        return int(a)

    def _tensor_info(self, r: _Reader, i: int, names: set[str]):
        name = r.string(f"tensor[{i}].name", MAX_KEY_BYTES)
        label = f"tensor {name!r}"
        if name in names:
            raise r.fail(label, f"duplicate tensor name (tensor[{i}])")
        names.add(name)
        n_dims = r.u32(f"{label} n_dims")
        if not 1 <= n_dims <= MAX_DIMS:
            raise r.fail(f"{label} n_dims", f"{n_dims} is outside 1..{MAX_DIMS}")
        dims = [r.u64(f"{label} dims[{d}]") for d in range(n_dims)]
        n_elements = 1
        for d, v in enumerate(dims):
            if v == 0 or v > INT64_MAX:
                raise r.fail(f"{label} dims[{d}]", f"dimension {v} must be in 1..2^63-1")
            n_elements *= v
            if n_elements > INT64_MAX:
                raise r.fail(f"{label} dims", f"element count {dims} overflows 64 bits")
        gtype = r.u32(f"{label} type")
        if gtype not in quant.GGML_TYPES:
            raise r.fail(f"{label} type", f"unknown GGML type id {gtype}")
        t = quant.GGML_TYPES[gtype]
        if dims[0] % t.block_size:
            raise r.fail(
                f"{label} dims[0]",
                f"row length {dims[0]} is not a multiple of the {t.name} block size {t.block_size}",
            )
        nbytes = n_elements // t.block_size * t.block_bytes
        rel = r.u64(f"{label} offset")
        # A cheap early check (the data section starts after the tensor infos, so its size is
        # at most what is left now); the exact check follows once the header is read.
        if nbytes > self.size:
            raise r.fail(
                f"{label} dims", f"{nbytes} bytes of data exceed the file size {self.size}"
            )
        return name, gtype, dims, rel, nbytes

    # ------------------------------------------------------------------ tensors

    def raw(self, name: str) -> torch.Tensor:
        """The stored data, zero-copy: float tensors in torch shape for F32/F16/BF16 (and the
        other plain element types), uint8 [..., row_bytes] for block types."""
        t = self._info(name)
        gt = quant.GGML_TYPES[t.ggml_type]
        if gt.block_size == 1:
            dtype = _ELEMENT_DTYPES[gt.name]
            flat = torch.frombuffer(self._mm, dtype=dtype, count=t.n_elements, offset=t.offset)
            return flat.view(t.shape)
        flat = torch.frombuffer(self._mm, dtype=torch.uint8, count=t.nbytes, offset=t.offset)
        return flat.view(*t.shape[:-1], quant.row_bytes(gt.name, t.shape[-1]))

    def release(self, tensor: torch.Tensor) -> int:
        """Drop this process's resident pages of `tensor` if it is a view into this file's
        mapping (else nothing): for data that was copied (fused matrices) or repacked (int8
        panels) and is no longer read. Safe either way: the mapping is never written, so a
        page touched again is read back from the file (page cache). Returns the bytes dropped
        (whole pages inside the tensor only)."""
        if tensor.device.type != "cpu" or not tensor.is_contiguous() or tensor.numel() == 0:
            return 0
        base = torch.frombuffer(self._mm, dtype=torch.uint8, count=1).data_ptr()
        start = tensor.data_ptr() - base
        end = start + tensor.numel() * tensor.element_size()
        if start < 0 or end > self.size:
            return 0
        page = mmap.PAGESIZE
        first, last = -(-start // page) * page, end // page * page
        if last <= first or not hasattr(self._mm, "madvise"):
            return 0
        self._mm.madvise(mmap.MADV_DONTNEED, first, last - first)
        return last - first

    def weight(self, name: str, convert_to: str = "q8_0") -> tuple[torch.Tensor, str]:
        """(tensor, qtype) in a type the kernels compute on.

        f32/f16/bf16/q4_0/q4_1/q8_0/q5_0/q5_1/q4_k/q5_k/q6_k are returned as stored (zero-copy;
        `kept_qtypes`: PYLLM_NATIVE_KQUANTS=0 keeps only the first six). Other types are
        converted at load: block types (Q2_K, Q3_K, IQ*, ...) to
        `convert_to` ("q8_0" by default: its rounding error is an order of magnitude below the
        source format's, at a byte a weight; "f16" or "f32" on request), plain F64/integer
        tensors to f32. A one-line
        notice goes to stderr, once per file.
        """
        t = self._info(name)
        if t.type_name in kept_qtypes():
            return self.raw(name), t.type_name
        gt = quant.GGML_TYPES[t.ggml_type]
        if gt.block_size == 1:  # F64, I8/I16/I32/I64: element by element, no blocks
            return self._plain_to_f32(name, t), "f32"
        target = convert_to
        if target not in KERNEL_QTYPES:
            raise ValueError(f"convert_to must be one of {sorted(KERNEL_QTYPES)}, got {target!r}")
        if target not in FLOAT_TARGETS and t.shape[-1] % quant.block_size(target):
            target = "f16"  # rows that are not whole q8_0 blocks
        self._notice(target)
        try:
            return _convert(self.raw(name), gt.name, t.shape, target), target
        except ValueError as e:  # e.g. NaN/inf block scales in a damaged file
            raise ModelFormatError(
                f"{self.path}: tensor {name!r}: cannot convert {gt.name} to {target}: {e}"
            ) from e

    def _plain_to_f32(self, name: str, t: TensorInfo) -> torch.Tensor:
        """An F64 or integer tensor as float32: integers beyond 2^24 round to the nearest
        float32; an F64 value beyond float32's range is refused rather than made infinite."""
        self._notice("f32")
        raw = self.raw(name)
        out = raw.to(torch.float32)
        if t.type_name == "f64" and bool((torch.isinf(out) & torch.isfinite(raw)).any()):
            raise ModelFormatError(
                f"{self.path}: tensor {name!r}: cannot convert f64 to f32: "
                f"it holds values beyond float32's range (about 3.4e38)"
            )
        return out

    def _notice(self, target: str) -> None:
        if self._converted_notice:
            return
        self._converted_notice = True
        kept = kept_qtypes()
        kinds = sorted(
            {t.type_name.upper() for t in self.tensors.values() if t.type_name not in kept}
        )
        computed_on = "/".join(sorted(k.upper() for k in kept))
        print(
            f"pyllm: {self.path.name}: converting {', '.join(kinds)} tensors to {target} at "
            f"load (the kernels compute on {computed_on})",
            file=sys.stderr,
        )

    def _info(self, name: str) -> TensorInfo:
        try:
            return self.tensors[name]
        except KeyError:
            raise ModelFormatError(f"{self.path}: tensor {name!r} is missing") from None

    # ------------------------------------------------------------------ metadata

    def get(self, key: str, type: Any = None, required: bool = True, default: Any = None) -> Any:
        """metadata[key], checked: ModelFormatError naming the key when it is absent (and
        required) or not of `type`.

        type: int (an integer value type, not bool), float (a float or integer value), str,
        bool, list (a list of strings), np.ndarray (a numeric array), or None (anything).
        """
        if key not in self.metadata:
            if required:
                raise ModelFormatError(f"{self.path}: {key}: required key is missing")
            return default
        value = self.metadata[key]
        vt = self.value_types[key]
        ok = {
            None: True,
            int: vt in _INT_TYPES,
            float: vt in _INT_TYPES | _FLOAT_TYPES,
            str: vt == STRING,
            bool: vt == BOOL,
            list: isinstance(value, list) and all(isinstance(x, str) for x in value),
            np.ndarray: isinstance(value, np.ndarray),
        }.get(type)
        if ok is None:
            raise TypeError(f"unsupported type {type!r}")
        if not ok:
            raise ModelFormatError(
                f"{self.path}: {key}: expected {_type_label(type)}, got {_describe(value, vt)}"
            )
        if type is float:
            value = float(value)
            if not math.isfinite(value):
                raise ModelFormatError(f"{self.path}: {key}: {value} is not a finite number")
        elif type is int:
            value = int(value)
        return value

    def get_int(
        self,
        key: str,
        lo: int | None = None,
        hi: int | None = None,
        *,
        required: bool = True,
        default: int | None = None,
    ) -> int | None:
        """An integer hyper-parameter within [lo, hi]."""
        v = self.get(key, int, required, default)
        return v if v is None else self.check_range(key, v, lo, hi)

    def get_float(
        self,
        key: str,
        lo: float | None = None,
        hi: float | None = None,
        *,
        required: bool = True,
        default: float | None = None,
    ) -> float | None:
        """A float hyper-parameter within [lo, hi] (finite)."""
        v = self.get(key, float, required, default)
        return v if v is None else self.check_range(key, v, lo, hi)

    def get_array(
        self,
        key: str,
        length: int | None = None,
        *,
        required: bool = True,
        numeric: bool | None = None,
    ) -> Any:
        """An array (list of str, or numeric numpy array), optionally of an exact length."""
        if key not in self.metadata:
            if required:
                raise ModelFormatError(f"{self.path}: {key}: required key is missing")
            return None
        value = self.metadata[key]
        vt = self.value_types[key]
        if numeric is True:
            value = self.get(key, np.ndarray)
        elif numeric is False:
            value = self.get(key, list)
        elif vt != ARRAY:
            raise ModelFormatError(
                f"{self.path}: {key}: expected an array, got {_describe(value, vt)}"
            )
        if length is not None and len(value) != length:
            raise ModelFormatError(
                f"{self.path}: {key}: expected {length} entries, got {len(value)}"
            )
        return value

    def get_token_id(self, key: str, vocab_size: int, *, required: bool = False) -> int | None:
        """A token id key (e.g. tokenizer.ggml.bos_token_id), checked to be < vocab_size."""
        return self.get_int(key, 0, vocab_size - 1, required=required)

    def check_range(self, key: str, value: Any, lo: Any = None, hi: Any = None) -> Any:
        """value if lo <= value <= hi (either bound may be None), else ModelFormatError."""
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            lo_s = "-inf" if lo is None else lo
            hi_s = "inf" if hi is None else hi
            raise ModelFormatError(f"{self.path}: {key}: {value} is outside [{lo_s}, {hi_s}]")
        return value

    def require_tensors(self, names: Iterable[str]) -> None:
        """ModelFormatError listing every missing tensor."""
        missing = [n for n in names if n not in self.tensors]
        if missing:
            more = f" (and {len(missing) - 5} more)" if len(missing) > 5 else ""
            raise ModelFormatError(f"{self.path}: missing tensors: {', '.join(missing[:5])}{more}")

    def __repr__(self) -> str:
        return (
            f"GGUFFile({str(self.path)!r}, v{self.version}, {len(self.metadata)} keys, "
            f"{len(self.tensors)} tensors)"
        )


_ELEMENT_DTYPES = {
    "f32": torch.float32,
    "f16": torch.float16,
    "bf16": torch.bfloat16,
    "f64": torch.float64,
    "i8": torch.int8,
    "i16": torch.int16,
    "i32": torch.int32,
    "i64": torch.int64,
}
FLOAT_TARGETS = frozenset({"f32", "f16", "bf16"})
_CONVERT_ROWS = 4096  # rows converted at a time, to bound the float32 temporary


def _convert(raw: torch.Tensor, src: str, shape: tuple[int, ...], target: str) -> torch.Tensor:
    cols = shape[-1]
    rows = math.prod(shape[:-1])
    src_rows = raw.reshape(rows, -1)
    parts = []
    for start in range(0, rows, _CONVERT_ROWS):
        w = quant.dequantize(src_rows[start : start + _CONVERT_ROWS], src, cols)
        parts.append(quant.quantize(w, target))
    out = torch.cat(parts) if len(parts) > 1 else parts[0]
    if target in FLOAT_TARGETS:
        return out.reshape(shape)
    return out.reshape(*shape[:-1], out.shape[-1])


def _align_up(n: int, a: int) -> int:
    return (n + a - 1) // a * a


def _type_label(t: Any) -> str:
    return {
        int: "an integer",
        float: "a number",
        str: "a string",
        bool: "a bool",
        list: "an array of strings",
        np.ndarray: "a numeric array",
    }.get(t, str(t))


def _describe(value: Any, vt: int) -> str:
    if vt == ARRAY:
        return f"an array of {len(value)} entries"
    return f"{VALUE_TYPE_NAMES[vt]} {value!r}"[:120]


def load_gguf(path: str | os.PathLike) -> GGUFFile:
    """Parse and validate a GGUF file; ModelFormatError (naming file and field) if it is bad."""
    return GGUFFile(path)
