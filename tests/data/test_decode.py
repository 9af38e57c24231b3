"""Decoding: the same pixels as keras.utils.load_img, and a clear reason for every bad file."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.data.decode import DecodeOptions, decode_bytes, decode_file
from pipeline.errors import ImageDecodeError
from tests.support.projects import write_image

OPTIONS = DecodeOptions(size=(32, 48))


@pytest.mark.parametrize("fmt, interpolation", [("JPEG", "bilinear"), ("PNG", "nearest"),
                                                ("BMP", "bicubic")])
def test_pixels_match_keras_load_img(tmp_path: Path, fmt, interpolation):
    from pipeline.nn.runtime import keras
    path = write_image(tmp_path / f"x.{fmt.lower()}", 3, size=(70, 50), fmt=fmt)
    options = DecodeOptions(size=(32, 48), interpolation=interpolation)
    ours = decode_file(path, options)
    theirs = keras.utils.img_to_array(keras.utils.load_img(
        path, target_size=(32, 48), interpolation=interpolation), dtype="uint8")
    assert ours.shape == (32, 48, 3) and ours.dtype == np.uint8
    np.testing.assert_array_equal(ours, theirs)


@pytest.mark.parametrize("data, reason", [
    (b"", "empty file"),
    (b"this is a text file, not a picture", "not an image"),
])
def test_non_images_have_a_reason(data, reason):
    with pytest.raises(ImageDecodeError, match=reason):
        decode_bytes(data, OPTIONS)


def test_truncated_jpeg_has_a_reason(tmp_path: Path):
    data = write_image(tmp_path / "x.jpg", 1, size=(200, 200)).read_bytes()
    with pytest.raises(ImageDecodeError, match="truncated or corrupt"):
        decode_bytes(data[: len(data) // 2], OPTIONS)


def test_too_many_pixels_is_refused_before_decoding(tmp_path: Path):
    data = write_image(tmp_path / "x.png", 1, size=(100, 100)).read_bytes()
    with pytest.raises(ImageDecodeError, match="too large: 100x100"):
        decode_bytes(data, DecodeOptions(size=(32, 32), max_pixels=9_999))
    assert decode_bytes(data, DecodeOptions(size=(32, 32), max_pixels=10_000)).shape == (32, 32, 3)


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "CMYK", "I;16"])
def test_other_colour_modes_become_rgb(mode):
    rng = np.random.default_rng(0)
    if mode == "I;16":
        image = Image.fromarray(rng.integers(0, 65535, (40, 40), dtype=np.uint16))
        fmt = "PNG"
    else:
        image = Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).convert(mode)
        fmt = "JPEG" if mode == "CMYK" else "PNG"
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    pixels = decode_bytes(buffer.getvalue(), OPTIONS)
    assert pixels.shape == (32, 48, 3)
    if mode == "I;16":  # scaled to 8 bits, not clipped to white
        grey = (np.asarray(image, dtype=np.uint32) * 255 // 65535).astype(np.uint8)
        expected = Image.fromarray(grey, "L").convert("RGB")
    else:
        expected = Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")
    expected = np.asarray(expected.resize((48, 32), Image.Resampling.BILINEAR))
    np.testing.assert_array_equal(pixels, expected)


def test_exif_orientation_is_applied():
    wide = np.zeros((20, 60, 3), np.uint8)  # 60 wide, 20 high, left third white
    wide[:, :20] = 255
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    buffer = io.BytesIO()
    Image.fromarray(wide).save(buffer, format="JPEG", exif=exif, quality=95)
    upright = decode_bytes(buffer.getvalue(), DecodeOptions(size=(60, 20)))
    raw = decode_bytes(buffer.getvalue(), DecodeOptions(size=(60, 20), exif_transpose=False))
    assert upright[:18].mean() > 230 and upright[22:].mean() < 25   # white on top
    assert raw[:, :6].mean() > 230 and raw[:, 8:].mean() < 25       # white on the left


def test_changed_file_is_refused(tmp_path: Path):
    path = write_image(tmp_path / "x.png", 1)
    with pytest.raises(ImageDecodeError, match="changed"):
        decode_file(path, OPTIONS, expected_sha256="0" * 64)


def test_unreadable_file_has_a_reason(tmp_path: Path):
    with pytest.raises(ImageDecodeError, match="unreadable"):
        decode_file(tmp_path / "missing.png", OPTIONS)


def test_batches_arrive_in_order_with_failures_marked(tmp_path: Path):
    from cache.files import sha256_file as file_sha256
    from pipeline.data.batches import BatchReader
    paths = [write_image(tmp_path / f"{i}.png", i) for i in range(7)]
    (tmp_path / "bad.png").write_bytes(b"nope")
    paths.insert(3, tmp_path / "bad.png")
    reader = BatchReader(paths, [file_sha256(p) for p in paths], OPTIONS, batch_size=3,
                         workers=2, prefetch=1)
    batches = list(reader)
    assert len(reader) == len(batches) == 3
    assert np.concatenate([b.positions for b in batches]).tolist() == list(range(8))
    ok = np.concatenate([b.ok for b in batches])
    assert ok.tolist() == [True, True, True, False, True, True, True, True]
    assert reader.failures == {3: "not an image (unknown format)"}
    first = batches[0].pixels
    assert first.shape == (3, 32, 48, 3) and first.dtype == np.float32
    np.testing.assert_array_equal(first[1], decode_file(paths[1], OPTIONS))
    assert not batches[1].pixels[0].any()  # the bad file is a zero image


def _jpeg(width: int, height: int, orientation: int | None = None) -> bytes:
    # smooth content with some texture, so a scaled decode differs a little, not wildly
    y, x = np.mgrid[0:height, 0:width]
    pixels = np.stack([x * 255 // width, y * 255 // height, (x * y) % 256], -1).astype(np.uint8)
    buffer = io.BytesIO()
    exif = Image.Exif()
    if orientation:
        exif[0x0112] = orientation
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=90, exif=exif)
    return buffer.getvalue()


def test_jpeg_draft_decodes_large_jpegs_scaled_and_leaves_the_rest(monkeypatch):
    from PIL import JpegImagePlugin

    asked = []
    real_draft = JpegImagePlugin.JpegImageFile.draft

    def spy(self, mode, size):
        result = real_draft(self, mode, size)
        asked.append((size, self.size))  # what was asked, what the decoder will produce
        return result

    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "draft", spy)
    options = DecodeOptions(size=(50, 40))
    drafted = DecodeOptions(size=(50, 40), jpeg_draft=True)

    large = _jpeg(400, 300)
    full, scaled = decode_bytes(large, options), decode_bytes(large, drafted)
    assert asked == [((40, 50), (100, 75))]  # 1/4: the smallest scale still covering 40x50
    assert scaled.shape == full.shape == (50, 40, 3)
    difference = np.abs(scaled.astype(float) - full).mean()
    assert 0 < difference < 8  # other pixels, the same picture

    # a JPEG under twice the size, and any other format, decode exactly as without the option
    small = _jpeg(60, 70)
    np.testing.assert_array_equal(decode_bytes(small, drafted), decode_bytes(small, options))
    png = io.BytesIO()
    Image.open(io.BytesIO(large)).save(png, format="PNG")
    np.testing.assert_array_equal(decode_bytes(png.getvalue(), drafted),
                                  decode_bytes(png.getvalue(), options))

    # a photo stored on its side asks the decoder for the size it will have before turning
    asked.clear()
    turned = decode_bytes(_jpeg(400, 100, orientation=6), DecodeOptions((100, 25), jpeg_draft=True))
    assert turned.shape == (100, 25, 3)
    assert asked == [((100, 25), (100, 25))]


def test_the_draft_option_is_in_the_decode_fingerprint_only_when_on():
    assert "jpeg_draft" not in OPTIONS.fingerprint_part()
    assert DecodeOptions(size=(32, 48), jpeg_draft=True).fingerprint_part()["jpeg_draft"] is True


def test_one_batch_is_decoded_by_several_threads_at_once(tmp_path: Path, monkeypatch):
    import threading

    from pipeline.data import batches

    paths = [write_image(tmp_path / f"{i}.png", i) for i in range(8)]
    # the first two decodes wait for each other: a reader that decoded a batch in one thread
    # would time out here
    meeting = threading.Barrier(2, timeout=10)
    threads, calls = set(), []
    real_decode = batches.decode_file

    def decode(path, options, sha256=None):
        calls.append(path)
        threads.add(threading.current_thread().name)
        if len(calls) <= 2:
            meeting.wait()
        return real_decode(path, options, sha256)

    monkeypatch.setattr(batches, "decode_file", decode)
    (batch,) = list(batches.BatchReader(paths, [None] * 8, OPTIONS, batch_size=8, workers=4))
    assert batch.ok.all() and len(threads) >= 2
    np.testing.assert_array_equal(batch.pixels[5], decode_file(paths[5], OPTIONS))
