"""Input pictures: an ImageFile must be a readable picture within Limits.image_pixels; masks that do nothing
are refused."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hostile import pixel_bomb_png
from PIL import Image
from pydantic import TypeAdapter, ValidationError

from comfy_orchestrator.input_images import (
    ImageFile,
    MaskResizedWarning,
    check_mask,
    has_alpha,
    open_picture,
    picture_size,
)
from comfy_orchestrator.limits import Limits

IMAGE_FILE = TypeAdapter(ImageFile)


def test_a_picture_is_accepted_as_its_path(sample_image: Path) -> None:
    assert IMAGE_FILE.validate_python(str(sample_image)) == sample_image


def test_image_that_is_not_a_picture(tmp_path: Path) -> None:
    text = tmp_path / "notes.png"
    text.write_text("not a picture")
    with pytest.raises(ValidationError, match="notes.png' is not a readable image \\(UnidentifiedImageError\\)"):
        IMAGE_FILE.validate_python(str(text))


@pytest.mark.parametrize(("make", "message"), [
    (lambda tmp: tmp / "missing.png", "image file '.*missing.png' does not exist"),
    (lambda tmp: tmp, "is not a file"),
    (lambda tmp: _write(tmp / "wide.png", pixel_bomb_png(12000, 12000)),
     r"is 12000x12000 pixels, over the limit of 134217728 \(Limits.image_pixels\); scale it down first"),
    (lambda tmp: _write(tmp / "bomb.png", pixel_bomb_png(20000, 20000)), "too many pixels to decode"),
])
def test_what_is_not_a_usable_picture_is_named(tmp_path: Path, make, message) -> None:
    with pytest.raises(ValidationError, match=message):
        IMAGE_FILE.validate_python(str(make(tmp_path)))


@pytest.mark.parametrize(("data", "message"), [
    (b"<html>not a picture</html>", r"^out.png is not a readable image \(UnidentifiedImageError\)$"),
    (pixel_bomb_png(12000, 12000),
     r"^out.png is 12000x12000 pixels, over the limit of 134217728 \(Limits.image_pixels\)$"),
    (pixel_bomb_png(20000, 20000), r"^out.png has too many pixels to decode \(limit 134217728, Limits.image_pixels\)$"),
])
def test_open_picture_refuses_in_one_line_naming_what_it_opened(data: bytes, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        open_picture(io.BytesIO(data), limit=Limits().image_pixels, what="out.png")


def test_open_picture_reads_the_size_without_decoding(sample_image: Path) -> None:
    with open_picture(io.BytesIO(sample_image.read_bytes()), limit=96 * 64, what="in.png") as picture:
        assert picture.size == (96, 64)
    with pytest.raises(ValueError, match="in.png is 96x64 pixels, over the limit of 6143"):
        open_picture(sample_image, limit=96 * 64 - 1, what="in.png")


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def test_size_and_transparency_are_read_from_the_file(sample_image: Path, tmp_path: Path) -> None:
    assert picture_size(sample_image) == (96, 64) and not has_alpha(sample_image)
    rgba, keyed = tmp_path / "rgba.png", tmp_path / "keyed.png"
    Image.new("RGBA", (8, 4), (0, 0, 0, 0)).save(rgba)
    Image.new("P", (8, 4), 0).save(keyed, transparency=0)
    assert has_alpha(rgba) and has_alpha(keyed) and picture_size(rgba) == (8, 4)


@pytest.fixture
def image(tmp_path: Path) -> Path:
    path = tmp_path / "image.png"
    Image.new("RGB", (16, 16)).save(path)
    return path


def _mask(tmp_path: Path, mode: str, size: tuple[int, int], colour: object) -> Path:
    path = tmp_path / f"mask-{mode}-{size[0]}.png"
    Image.new(mode, size, colour).save(path)  # type: ignore[arg-type]
    return path


@pytest.mark.parametrize(("mode", "colour", "channel", "message"), [
    ("L", 0, "red", "marks nothing to repaint \\(its red channel is all black\\)"),
    ("L", 255, "alpha", "has no alpha channel; use mask_channel=red"),
    ("RGBA", (255, 255, 255, 255), "alpha", "its alpha channel is all opaque"),
])
def test_masks_that_would_do_nothing_are_refused(image: Path, tmp_path: Path, mode, colour, channel,
                                                 message) -> None:
    with pytest.raises(ValueError, match=message):
        check_mask(image, _mask(tmp_path, mode, (16, 16), colour), channel)


def test_a_mask_of_another_size_is_stretched_with_a_warning(image: Path, tmp_path: Path) -> None:
    check_mask(image, _mask(tmp_path, "L", (16, 16), 255), "red")  # same size: no warning (warnings are errors)
    check_mask(image, _mask(tmp_path, "RGBA", (16, 16), (0, 0, 0, 0)), "alpha")
    with pytest.warns(MaskResizedWarning, match="is 8x8 but the image is 16x16; ComfyUI stretches the mask"):
        check_mask(image, _mask(tmp_path, "L", (8, 8), 255), "green")


def test_a_picture_rewritten_within_its_timestamps_granularity_is_read_again(tmp_path: Path) -> None:
    picture = tmp_path / "in.bmp"
    Image.new("RGB", (16, 8)).save(picture)
    racy_ns = time.time_ns() + HOUR_NS  # not clearly older than the reads below, however slowly this test runs
    os.utime(picture, ns=(racy_ns, racy_ns))
    assert picture_size(picture) == (16, 8)
    written = picture.stat()
    Image.new("RGB", (8, 16)).save(picture)  # the same number of bytes, within the same tick of the clock
    os.utime(picture, ns=(racy_ns, racy_ns))
    assert picture.stat().st_size == written.st_size
    assert picture_size(picture) == (8, 16)


def test_a_rewrite_that_restores_the_modification_time_is_read_again(tmp_path: Path) -> None:
    picture = tmp_path / "in.bmp"
    Image.new("RGB", (16, 8)).save(picture)
    old_ns = time.time_ns() - HOUR_NS  # clearly older than the read: the reading is remembered
    os.utime(picture, ns=(old_ns, old_ns))
    written = picture.stat()
    assert picture_size(picture) == (16, 8)
    Image.new("RGB", (8, 16)).save(picture)  # then as `cp -p` or `touch -r` leave it: same size and mtime
    os.utime(picture, ns=(old_ns, old_ns))
    for _ in range(1_000_000):  # until the file system's clock ticks on (a few ms; this bound only ends a hang)
        if picture.stat().st_ctime_ns != written.st_ctime_ns:
            break
        os.utime(picture, ns=(old_ns, old_ns))
    assert picture.stat().st_ctime_ns != written.st_ctime_ns, "the change time never moved"
    assert (picture.stat().st_size, picture.stat().st_mtime_ns) == (written.st_size, written.st_mtime_ns)
    assert picture_size(picture) == (8, 16)


HOUR_NS = 3600 * 10**9

# Counts the times the process opens the file argv[1] names (the interpreter's own audit event for open());
# stamp(offset_s) sets its modification time that far from now: an hour back is clearly older than any read
# (remembered), an hour ahead is not (read each time).
_COUNT_OPENS = """
import os, sys, time
from pathlib import Path
from PIL import Image
watched = Path(sys.argv[1])
target = os.path.realpath(watched)
opened = []
def count(event, args):
    if event == "open" and isinstance(args[0], (str, bytes, os.PathLike)) and os.path.realpath(args[0]) == target:
        opened.append(args[0])
sys.addaudithook(count)
def stamp(offset_s):
    ns = time.time_ns() + offset_s * 10**9
    os.utime(watched, ns=(ns, ns))
from comfy_orchestrator.params import WORKFLOWS
"""

# A sweep's worth of img2img cells validated, then after the picture is rewritten, only touched, then racy
# (then read at each use: as an ImageFile and for the generation size).
_PICTURE_OPENS = _COUNT_OPENS + """
def validate(times):
    before = len(opened)
    sizes = {WORKFLOWS["img2img"].build({"image": str(watched), "denoise": n / 100}).generation_size()
             for n in range(times)}
    return len(opened) - before, sorted(sizes)
stamp(-3600)
print(validate(100))
Image.new("RGB", (48, 40)).save(watched)
stamp(-3600)
print(validate(10))
stamp(-1800)
print(validate(10))
stamp(3600)
print(validate(10))
"""


def _count_opens(script: str, *argv: Path) -> list[str]:
    done = subprocess.run([sys.executable, "-c", script, *map(str, argv)], capture_output=True, text=True,
                          check=False, env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()


def test_a_picture_is_read_once_until_it_changes_on_disk(sample_image: Path, tmp_path: Path) -> None:
    picture = tmp_path / "in.png"
    picture.write_bytes(sample_image.read_bytes())
    assert _count_opens(_PICTURE_OPENS, picture) == ["(1, [(96, 64)])", "(1, [(48, 40)])", "(1, [(48, 40)])",
                                                     "(20, [(48, 40)])"]


# An inpaint sweep's cells validated with one mask; then with the mask rewritten all black (each cell refused),
# then racy. A mask is opened twice while unchanged: read as an ImageFile, and decoded once for its check.
_MASK_OPENS = _COUNT_OPENS + """
from comfy_orchestrator.errors import ParameterError
def validate(times):
    before, refused = len(opened), 0
    for n in range(times):
        try:
            WORKFLOWS["inpaint"].build({"image": sys.argv[2], "mask": str(watched), "seed": n})
        except ParameterError as exc:
            refused += "marks nothing to repaint" in str(exc)
    return len(opened) - before, refused
stamp(-3600)
print(validate(10))
Image.new("L", (96, 64), 0).save(watched)
stamp(-3600)
print(validate(10))
stamp(3600)
print(validate(10))
"""


def test_a_mask_is_decoded_once_until_it_changes_on_disk(sample_image: Path, tmp_path: Path) -> None:
    mask = tmp_path / "mask.png"
    picture = Image.new("L", (96, 64), 0)
    picture.paste(255, (20, 10, 60, 40))
    picture.save(mask)
    assert _count_opens(_MASK_OPENS, mask, sample_image) == ["(2, 0)", "(2, 10)", "(20, 10)"]
