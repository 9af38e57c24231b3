"""A corpus of awkward image files, generated in a few lines each instead of committed.

:func:`write_corpus` fills a data folder with good images in unusual formats, files that cannot
be used, and folder shapes that trip scanners. It returns what a correct extraction must make
of each: the relative paths that must be cached, and for every bad file a fragment of the
reason the summary must give.
"""

from __future__ import annotations

import io
import os
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

NON_UTF8_NAME = b"caf\xe9-latin1.jpg"  # 'café' in Latin-1: not valid UTF-8


@dataclass
class Corpus:
    """What :func:`write_corpus` made: expected outcomes by relative path."""

    good: set[str] = field(default_factory=set)            # must be cached and in the view
    bad: dict[str, str] = field(default_factory=dict)      # relpath -> fragment of the reason
    empty_classes: set[str] = field(default_factory=set)   # class folders with no image file
    only_bad_classes: set[str] = field(default_factory=set)
    ignored: set[str] = field(default_factory=set)         # must appear nowhere

    @property
    def cases(self) -> int:
        """Number of files and folders tried."""
        return len(self.good) + len(self.bad) + len(self.empty_classes) + len(self.ignored)


def _noise(seed: int, size: tuple[int, int], channels: int = 3) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (size[1], size[0], channels), dtype=np.uint8).squeeze()


def _encode(image: Image.Image, fmt: str, **params) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **params)
    return buffer.getvalue()


def _png_declaring(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width`` x ``height`` (its pixel data is a tiny image)."""
    data = bytearray(_encode(Image.fromarray(_noise(0, (4, 4))), "PNG"))
    # IHDR is the first chunk: 8-byte signature, 4-byte length, b"IHDR", then width, height
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


def _animated_gif() -> bytes:
    frames = [Image.fromarray(_noise(seed, (30, 20))).convert("P") for seed in (1, 2, 3)]
    return _encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50)


def _rotated_jpeg() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    return _encode(Image.fromarray(_noise(4, (60, 20))), "JPEG", exif=exif)


def _sixteen_bit_png() -> bytes:
    rng = np.random.default_rng(5)
    return _encode(Image.fromarray(rng.integers(0, 65535, (24, 24), dtype=np.uint16)), "PNG")


def _broken_png_crc() -> bytes:
    data = bytearray(_encode(Image.fromarray(_noise(6, (24, 24))), "PNG"))
    data[-20] ^= 0xFF  # inside the last IDAT chunk: its CRC no longer matches
    return bytes(data)


def write_corpus(root: Path, max_pixels: int) -> Corpus:
    """Write the corpus under ``root`` (``root/<class>/...``); ``max_pixels`` is the pixel
    limit the configuration will use (one file exceeds it honestly, one claims 10^10 pixels).
    """
    corpus = Corpus()

    def put(relpath: str | bytes, data: bytes, expect: str | None = None) -> None:
        path = Path(os.fsdecode(os.path.join(os.fsencode(root), os.fsencode(relpath))))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        rel = os.fsdecode(relpath)
        if expect is None:
            corpus.good.add(rel)
        else:
            corpus.bad[rel] = expect

    jpeg = _encode(Image.fromarray(_noise(10, (40, 30))), "JPEG")
    # good files, in every format and colour mode a photo folder may hold
    put("formats/plain.jpg", jpeg)
    put("formats/alpha.png", _encode(Image.fromarray(_noise(11, (30, 30), 4), "RGBA"), "PNG"))
    put("formats/grey.png", _encode(Image.fromarray(_noise(12, (30, 30), 1), "L"), "PNG"))
    put("formats/deep16.png", _sixteen_bit_png())
    put("formats/palette.png", _encode(Image.fromarray(_noise(13, (30, 30))).convert("P"), "PNG"))
    put("formats/animated.gif", _animated_gif())
    put("formats/bitmap.bmp", _encode(Image.fromarray(_noise(14, (30, 30))), "BMP"))
    put("formats/cmyk.jpg", _encode(Image.fromarray(_noise(15, (30, 30))).convert("CMYK"),
                                     "JPEG"))
    put("formats/rotated.jpg", _rotated_jpeg())
    put("formats/png-named.JPG", _encode(Image.fromarray(_noise(16, (30, 30))), "PNG"))
    put("formats/one-pixel.png", _encode(Image.fromarray(_noise(17, (1, 1))), "PNG"))
    put("formats/sliver.png", _encode(Image.fromarray(_noise(18, (3000, 2))), "PNG"))
    put(b"names/" + NON_UTF8_NAME, _encode(Image.fromarray(_noise(19, (30, 30))), "JPEG"))
    put("names/new\nline, \"quoted\".png",
        _encode(Image.fromarray(_noise(20, (30, 30))), "PNG"))
    put("names/-dash ünï cödé 图像.png", _encode(Image.fromarray(_noise(21, (30, 30))), "PNG"))
    put("names/deep/er/nested.png", _encode(Image.fromarray(_noise(22, (30, 30))), "PNG"))

    for i in range(3):  # class names that are not UTF-8 or that matplotlib would parse
        put(b"cat\xe9gorie/%d.png" % i, _encode(Image.fromarray(_noise(30 + i, (30, 30))), "PNG"))
        put(f"$5 bills$/{i}.png", _encode(Image.fromarray(_noise(40 + i, (30, 30))), "PNG"))

    # bad files next to good ones
    put("mixed/truncated.jpg", jpeg[: len(jpeg) // 2], "truncated or corrupt")
    put("mixed/zero-bytes.jpg", b"", "empty file")
    put("mixed/notes.jpg", b"shopping list: milk, eggs\n", "not an image")
    side = int(max_pixels ** 0.5) + 1
    put("mixed/huge.png", _encode(Image.fromarray(np.zeros((side, side, 3), np.uint8)), "PNG"),
        f"too large: {side}x{side}")
    put("mixed/bomb.png", _png_declaring(100_000, 100_000), "too large")
    put("mixed/bad-crc.png", _broken_png_crc(), "corrupt")
    put(b"mixed/\xff\xfe.jpg", b"", "empty file")               # bad, and a bad name
    put("mixed/two\nlines.jpg", b"GIF89a", "not an image")       # a name that breaks lines
    put("mixed/good.png", _encode(Image.fromarray(_noise(23, (30, 30))), "PNG"))

    mixed = root / "mixed"
    os.symlink("nowhere.jpg", mixed / "dangling.jpg")
    corpus.bad["mixed/dangling.jpg"] = "unreadable: No such file or directory"
    os.symlink("loop-b.jpg", mixed / "loop-a.jpg")
    os.symlink("loop-a.jpg", mixed / "loop-b.jpg")
    corpus.bad["mixed/loop-a.jpg"] = "unreadable: Too many levels of symbolic links"
    corpus.bad["mixed/loop-b.jpg"] = "unreadable: Too many levels of symbolic links"
    os.symlink("..", mixed / "folder-loop")          # a folder that contains itself
    os.mkfifo(mixed / "pipe.jpg")                    # reading it would block forever
    corpus.bad["mixed/pipe.jpg"] = "not a regular file"
    (mixed / "folder.jpg").mkdir()                   # a folder with an image's name
    put("mixed/folder.jpg/inside.png", _encode(Image.fromarray(_noise(24, (30, 30))), "PNG"))
    (mixed / ".hidden.jpg").write_bytes(b"")         # hidden files are not images
    corpus.ignored.add("mixed/.hidden.jpg")
    (mixed / "readme.txt").write_text("not an image extension")
    corpus.ignored.add("mixed/readme.txt")
    if os.geteuid() != 0:  # root reads files whatever their mode
        put("mixed/no-permission.jpg", jpeg[:-1] + b"\xd9", "unreadable: Permission denied")
        os.chmod(mixed / "no-permission.jpg", 0)

    (root / "empty-class").mkdir()
    corpus.empty_classes.add("empty-class")
    put("only-bad/zero.png", b"", "empty file")
    put("only-bad/text.jpg", b"<html>404</html>", "not an image")
    corpus.only_bad_classes.add("only-bad")
    return corpus
