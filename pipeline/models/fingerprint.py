"""Fingerprints of a model's weight files, computed without building the model.

A fingerprint is a sha256 hex string over every tensor's name, shape, dtype and
a sample of its raw bytes: all of a small tensor (norms, biases, tiny test
models), and for a large one a fixed number of evenly spaced contiguous windows
(always including its first and last elements). The windows are short runs of
neighbouring values, so a 70B checkpoint costs a few dozen page reads per tensor
and a few MiB of memory, never a whole tensor: the job driver can fingerprint a
model it never loads, and a worker that loaded it gets the same string from the
same files.

Tensors are taken in name order, whatever file they sit in: the same weights
saved as one file or in shards have the same fingerprint. It depends only on
the file contents (not on paths, times, the dtype a model is loaded in, or the
safetensors metadata), so it is the same on every machine. Like any sample it
can miss a change confined to the unsampled part of a large tensor; any change
of shape, dtype or name, and any change of a small tensor, always shows.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import mmap
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from embwalk.errors import ModelError, first_line

SAFE_WEIGHTS = "model.safetensors"
SAFE_INDEX = "model.safetensors.index.json"

FULL_ELEMENTS = 1 << 16  # tensors up to this many elements are hashed whole
WINDOWS = 64  # contiguous windows sampled from a larger tensor
WINDOW = 64  # elements (safetensors) per window; bytes scale with the dtype


def windows(n: int, width: int, count: int = WINDOWS) -> list[tuple[int, int]]:
    """``count`` evenly spaced ``[start, stop)`` windows of ``width`` over ``range(n)``, the first
    at 0 and the last ending at ``n``."""
    if n <= width * count:
        return [(0, n)]
    starts = np.linspace(0, n - width, count).round().astype(np.int64)
    return [(int(s), int(s) + width) for s in starts]


# --- safetensors ---------------------------------------------------------------------------


def safetensors_files(directory: Path, model: str) -> list[Path]:
    """The safetensors files transformers loads from ``directory``: ``model.safetensors``, else
    the shards a ``model.safetensors.index.json`` names (checked to exist)."""
    single = directory / SAFE_WEIGHTS
    if single.is_file():
        return [single]
    index = directory / SAFE_INDEX
    if not index.is_file():
        raise ModelError(
            f"model {model!r} has no safetensors weights ({SAFE_WEIGHTS} or {SAFE_INDEX}) in {directory}"
        )
    return _shards(index, model, lambda name: directory / name)


def hub_safetensors_files(repo: str, model: str, revision: str | None = None) -> list[Path]:
    """The same files for a hub id, from (or downloaded into) the local Hugging Face cache:
    the weights land on disk, where a worker's ``from_pretrained`` finds them, never in memory."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError

    def fetch(name: str) -> Path:
        return Path(hf_hub_download(repo, name, revision=revision))

    try:
        try:
            return [fetch(SAFE_WEIGHTS)]
        except EntryNotFoundError:
            pass
        try:
            index = fetch(SAFE_INDEX)
        except EntryNotFoundError:
            raise ModelError(f"model {model!r} has no safetensors weights ({SAFE_WEIGHTS} or {SAFE_INDEX})") from None
        return _shards(index, model, fetch)
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot load model {model!r}: {first_line(exc)}") from exc


def _shards(index: Path, model: str, locate) -> list[Path]:
    try:
        weight_map = json.loads(index.read_text())["weight_map"]
        names = sorted(set(weight_map.values()))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ModelError(f"model {model!r} has an unreadable {SAFE_INDEX}: {first_line(exc)}") from exc
    if not names:
        raise ModelError(f"model {model!r} has an empty {SAFE_INDEX}")
    files = []
    for name in names:
        path = locate(name)
        if not Path(path).is_file():
            raise ModelError(f"model {model!r} is missing the weights shard {name} that {SAFE_INDEX} names")
        files.append(Path(path))
    return files


def safetensors_fingerprint(files: list[Path], model: str = "") -> str:
    """The fingerprint of the tensors in these safetensors files (see the module docstring).

    The files are read with positioned reads of the sampled bytes only, after parsing their
    header (8-byte length, then JSON: dtype, shape, data offsets per tensor). Not a memory
    map: the kernel maps pages around every touched one (fault-around), so sampling a
    0.9 GB file through a map raised the driver's resident size by ~750 MB.
    """
    digest = hashlib.sha256(b"embwalk-weights-safetensors-v1\0")
    try:
        with contextlib.ExitStack() as stack:
            tensors = []
            for path in files:
                fh = stack.enter_context(open(path, "rb"))
                header, data_start = _safetensors_header(fh)
                tensors += [(name, fh, data_start, info) for name, info in header.items() if name != "__metadata__"]
            for name, fh, data_start, info in sorted(tensors, key=lambda t: t[0]):
                shape, dtype = list(info["shape"]), info["dtype"]
                begin, end = info["data_offsets"]
                digest.update(f"{name}:{tuple(shape)}:{dtype}\0".encode())
                n = int(np.prod(shape, dtype=np.int64))
                itemsize = (end - begin) // max(n, 1)
                spans = [(0, n)] if n <= FULL_ELEMENTS else _row_windows(shape, n)
                for start, stop in spans:
                    want = (stop - start) * itemsize
                    chunk = os.pread(fh.fileno(), want, data_start + begin + start * itemsize)
                    if len(chunk) != want:
                        raise ValueError(f"tensor {name} ends past the end of {path_of(fh)}")
                    digest.update(chunk)
    except (OSError, ValueError, KeyError, TypeError, struct.error) as exc:
        raise ModelError(f"cannot read the weights of model {model!r}: {first_line(exc)}") from exc
    return digest.hexdigest()


def _safetensors_header(fh) -> tuple[dict, int]:
    (length,) = struct.unpack("<Q", fh.read(8))
    if length > 100_000_000:
        raise ValueError(f"not a safetensors file (header of {length} bytes): {path_of(fh)}")
    return json.loads(fh.read(length)), 8 + length


def path_of(fh) -> str:
    return getattr(fh, "name", "?")


def _row_windows(shape: list[int], n: int) -> list[tuple[int, int]]:
    """``windows`` over a tensor's flat elements, each kept inside one last-dimension row (moved
    back to end at its row's end where it would cross it): the first and last elements stay in."""
    last = shape[-1]
    width = min(WINDOW, last)
    out = []
    for start, _ in windows(n, width):
        start = min(start, (start // last + 1) * last - width)
        out.append((start, start + width))
    return out


def _window_index(shape: list[int], start: int, stop: int) -> tuple:
    """The index of the flat window ``[start, stop)``, clipped to the end of its last-dimension
    row (a window never spans two rows): leading dimensions fixed, a slice of the last one."""
    *lead, last = shape
    row, col = divmod(start, last)
    index = []
    for size in reversed(lead):
        row, i = divmod(row, size)
        index.append(i)
    return (*reversed(index), slice(col, min(col + (stop - start), last)))


# --- GGUF ----------------------------------------------------------------------------------


def gguf_fingerprint(path: Path, model: str = "") -> str:
    """The fingerprint of a GGUF file's tensors: names, shapes, ggml types and samples of their
    raw (possibly quantized) bytes, read through a memory map. Nothing is dequantized."""
    digest = hashlib.sha256(b"embwalk-weights-gguf-v1\0")
    try:
        tensors = gguf_tensors(path)
        with open(path, "rb") as fh:  # positioned reads of the sampled bytes (no memory map: see above)
            for tensor in sorted(tensors, key=lambda t: t.name):
                digest.update(f"{tensor.name}:{tensor.shape}:{tensor.type}\0".encode())
                width = WINDOW * 4  # bytes: a float32 window's worth
                full = tensor.n_bytes <= FULL_ELEMENTS * 4
                for start, stop in [(0, tensor.n_bytes)] if full else windows(tensor.n_bytes, width):
                    chunk = os.pread(fh.fileno(), stop - start, tensor.offset + start)
                    if len(chunk) != stop - start:
                        raise ValueError(f"tensor {tensor.name} ends past the end of the file")
                    digest.update(chunk)
    except (OSError, ValueError, KeyError, struct.error) as exc:
        raise ModelError(f"cannot read GGUF file {path} of model {model!r}: {first_line(exc)}") from exc
    return digest.hexdigest()


@dataclass(frozen=True)
class GGUFTensor:
    name: str
    shape: tuple[int, ...]  # GGUF order (ne0 first), as gguf.GGUFReader gives it
    type: str  # ggml type name: F32, Q4_1, ...
    offset: int  # absolute byte offset in the file
    n_bytes: int


def gguf_tensors(path: Path) -> list[GGUFTensor]:
    """The tensor table of a GGUF file (v2/v3), as ``gguf.GGUFReader(path).tensors`` describes it.

    GGUFReader also parses every metadata value into numpy views (about 2 s for SmolLM2's
    49k-token vocabulary, on every load): this reads the header with ``struct``, skipping
    the metadata values it does not need (milliseconds). Types and sizes are gguf's own.
    """
    from gguf.constants import GGML_QUANT_SIZES, GGUF_DEFAULT_ALIGNMENT, GGUF_MAGIC, GGMLQuantizationType

    with open(path, "rb") as fh:
        buf = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
    try:
        if struct.unpack_from("<I", buf, 0)[0] != GGUF_MAGIC:
            raise ValueError("not a GGUF file (bad magic)")
        order = "<"
        version = struct.unpack_from("<I", buf, 4)[0]
        if version & 0xFFFF == 0:  # written on a machine of the other byte order
            order, version = ">", struct.unpack_from(">I", buf, 4)[0]
        if version not in (2, 3):
            raise ValueError(f"GGUF version {version} is not supported (2 and 3 are)")

        def read(fmt: str, at: int) -> tuple:
            return struct.unpack_from(order + fmt, buf, at)

        def string(at: int) -> tuple[str, int]:
            (n,) = read("Q", at)
            return bytes(buf[at + 8 : at + 8 + n]).decode("utf-8"), at + 8 + n

        def skip(kind: int, at: int) -> int:
            if kind == _GGUF_STRING:
                return at + 8 + read("Q", at)[0]
            if kind == _GGUF_ARRAY:
                item, count = read("IQ", at)
                at += 12
                if item in _GGUF_SCALAR:
                    return at + count * _GGUF_SCALAR[item]
                for _ in range(count):
                    at = skip(item, at)
                return at
            return at + _GGUF_SCALAR[kind]

        n_tensors, n_kv = read("QQ", 8)
        at, alignment = 24, GGUF_DEFAULT_ALIGNMENT
        for _ in range(n_kv):
            key, at = string(at)
            (kind,) = read("I", at)
            at += 4
            if key == "general.alignment" and kind == _GGUF_UINT32:
                (alignment,) = read("I", at)
            at = skip(kind, at)
        if alignment <= 0 or alignment & (alignment - 1):
            raise ValueError(f"invalid alignment {alignment}")
        infos = []
        for _ in range(n_tensors):
            name, at = string(at)
            (n_dims,) = read("I", at)
            dims = read(f"{n_dims}Q", at + 4)
            kind, offset = read("IQ", at + 4 + 8 * n_dims)
            at += 4 + 8 * n_dims + 12
            infos.append((name, tuple(int(d) for d in dims), GGMLQuantizationType(kind), int(offset)))
        data = at + (-at % alignment)
        tensors = []
        for name, dims, kind, offset in infos:
            block, size = GGML_QUANT_SIZES[kind]
            n_bytes = int(np.prod(dims, dtype=np.int64)) * size // block
            if data + offset + n_bytes > len(buf):
                raise ValueError(f"tensor {name} runs past the end of the file")
            tensors.append(GGUFTensor(name, dims, kind.name, data + offset, n_bytes))
        return tensors
    finally:
        buf.close()


_GGUF_UINT32, _GGUF_STRING, _GGUF_ARRAY = 4, 8, 9
_GGUF_SCALAR = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}  # GGUFValueType -> bytes
