"""Columns of strings without a Python object per string.

A list of 10^6 short strings costs ~75 MB of ``str`` objects and pointers; the same text packed
into one buffer costs its UTF-8 bytes and 8 bytes of offset each. (numpy's ``StringDType`` does
this from numpy 2, above this project's lower bound; pyarrow's strings cost an import of
~0.25 s and 37 MiB that every ``pipeline`` command would pay.)
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import numpy as np

# lone surrogates (file names that are not UTF-8, read with surrogateescape, or written as
# \udcxx escapes by json) survive the round trip
_ERRORS = "surrogatepass"


class PackedStrings:
    """N strings as one ``(bytes,) uint8`` buffer of their UTF-8 text and ``(N + 1,) int64``
    offsets into it (string i is ``data[ends[i]:ends[i + 1]]``). Immutable."""

    __slots__ = ("data", "ends")

    def __init__(self, data: np.ndarray, ends: np.ndarray):
        if ends.ndim != 1 or len(ends) < 1 or ends[0] != 0 or ends[-1] != len(data):
            raise ValueError("ends must run from 0 to the length of data")
        self.data, self.ends = data, ends

    @classmethod
    def of(cls, strings: Iterable[str]) -> PackedStrings:
        """Pack ``strings`` (their encoded copies live only while this runs)."""
        encoded = [text.encode("utf-8", _ERRORS) for text in strings]
        ends = np.zeros(len(encoded) + 1, np.int64)
        np.cumsum(np.fromiter(map(len, encoded), np.int64, len(encoded)), out=ends[1:])
        return cls(np.frombuffer(b"".join(encoded), np.uint8), ends)

    def __len__(self) -> int:
        return len(self.ends) - 1

    def __getitem__(self, index: int) -> str:
        position = index + len(self) if index < 0 else index
        if not 0 <= position < len(self):
            raise IndexError(f"string {index} of {len(self)}")
        start, end = self.ends[position], self.ends[position + 1]
        return self.data[start:end].tobytes().decode("utf-8", _ERRORS)

    def __iter__(self) -> Iterator[str]:
        return iter(self.tolist())

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, PackedStrings):
            return NotImplemented
        return np.array_equal(self.ends, other.ends) and np.array_equal(self.data, other.data)

    def __repr__(self) -> str:
        return f"PackedStrings({len(self)} strings, {len(self.data)} bytes)"

    def tolist(self, start: int = 0, stop: int | None = None) -> list[str]:
        """Strings ``start:stop`` as ``str`` objects."""
        stop = len(self) if stop is None else min(stop, len(self))
        if start >= stop:
            return []
        # only these strings' bytes are copied out (a table is iterated a chunk at a time)
        first, last = int(self.ends[start]), int(self.ends[stop])
        text = self.data[first:last].tobytes()
        bounds = (self.ends[start:stop + 1] - first).tolist()
        return [text[a:b].decode("utf-8", _ERRORS) for a, b in zip(bounds, bounds[1:])]

    def compress(self, mask: np.ndarray) -> PackedStrings:
        """The strings where ``mask`` ((N,) bool) is true, in order, packed anew (a mask a
        byte: cheaper than :meth:`take` over most of the strings)."""
        lengths = np.diff(self.ends)[mask]
        ends = np.zeros(len(lengths) + 1, np.int64)
        np.cumsum(lengths, out=ends[1:])
        return PackedStrings(self.data[np.repeat(mask, np.diff(self.ends))], ends)

    def take(self, indices: np.ndarray) -> PackedStrings:
        """The strings at ``indices`` ((K,) integers), in that order, packed anew."""
        indices = np.asarray(indices, np.int64)
        starts = self.ends[indices]
        lengths = self.ends[indices + 1] - starts
        ends = np.zeros(len(indices) + 1, np.int64)
        np.cumsum(lengths, out=ends[1:])
        # byte j of string k comes from starts[k] + (j - ends[k])
        source = np.repeat(starts - ends[:-1], lengths) + np.arange(ends[-1], dtype=np.int64)
        return PackedStrings(self.data[source], ends)
