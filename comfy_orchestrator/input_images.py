"""Pictures opened within Limits.image_pixels (open_picture, also for those a server sends); the local pictures
a job takes as input: checked when parameters are validated, measured, masks checked.

The checks raise ValueError, as pydantic validators do; the model turns them into a ParameterError.
A picture (and a mask's check) is read once while the file stays as it is on disk: a sweep validates its
input picture and mask for every cell. See _unchanged_key for what "as it is" means.
"""

from __future__ import annotations

import functools
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, cast

from pydantic import AfterValidator, Field

from comfy_orchestrator.limits import Limits

if TYPE_CHECKING:  # Pillow loads when a picture is first opened
    from PIL import Image


class MaskResizedWarning(UserWarning):
    """A mask's size differs from its image's; ComfyUI stretches it."""


def open_picture(source: Any, *, limit: int, what: str, advice: str = "") -> Image.Image:
    """Open a picture without decoding its pixels; ValueError naming `what` when Pillow cannot read it or it has
    more than `limit` pixels (Limits.image_pixels), with `advice` after a refusal for size."""
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own limit decides, below
            image = Image.open(source)
    except Image.DecompressionBombError as exc:
        raise ValueError(f"{what} has too many pixels to decode (limit {limit}, Limits.image_pixels){advice}") from exc
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise ValueError(f"{what} is not a readable image ({type(exc).__name__})") from exc
    width, height = image.size
    if width * height > limit:
        image.close()
        raise ValueError(f"{what} is {width}x{height} pixels, over the limit of {limit} (Limits.image_pixels){advice}")
    return image


PICTURES_KEPT = 64  # pictures (and masks) whose reading is remembered while their files are unchanged
RACY_WINDOW_NS = 2 * 10**9  # the coarsest modification times in use (FAT's 2 s; ext3 and HFS+ keep seconds)

_FileKey = tuple[str, int, int, int, int]


@dataclass(frozen=True)
class _Picture:
    """What the checks and the models need of a local picture, read once."""

    size: tuple[int, int]
    has_alpha: bool


def _existing_image(path: Path) -> Path:
    if not path.exists():
        raise ValueError(f"image file {str(path)!r} does not exist")
    if not path.is_file():
        raise ValueError(f"{str(path)!r} is not a file")
    _read(path)
    return path


def _unchanged_key(path: Path) -> _FileKey | None:
    """What tells that a file is as it was when read, as git's index tells it: its resolved path, size,
    modification and change times and inode; None while that cannot be trusted.

    A file rewritten within its timestamps' granularity keeps its size and times, so a reading is not
    remembered until the file's modification time is clearly (RACY_WINDOW_NS) older than the moment it is
    read; a rewrite after that moves the times on. Until then the file is read at each use (a sweep of a
    picture written a moment ago reads it per cell for those two seconds). The change time and inode also
    tell a rewrite that restores the old modification time (cp -p, touch -r, tar) or a file renamed into
    its place.
    """
    read_at_ns = time.time_ns()  # before the stat: the content read afterwards is at least this new
    stat = path.stat()
    if read_at_ns - stat.st_mtime_ns < RACY_WINDOW_NS:
        return None
    return str(path.resolve()), stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_ino


def _read(path: Path) -> _Picture:
    """The picture at `path`, checked and measured; read again only when the file changed."""
    key = _unchanged_key(path)
    return _read_picture(str(path), str(path)) if key is None else _read_unchanged(key, str(path))


@functools.lru_cache(maxsize=PICTURES_KEPT)
def _read_unchanged(key: _FileKey, given: str) -> _Picture:
    """The picture read once per unchanged file."""
    return _read_picture(key[0], given)


def _read_picture(source: str, given: str) -> _Picture:
    """Read and verify a picture."""
    with open_picture(source, limit=Limits().image_pixels, what=repr(given), advice="; scale it down first") as img:
        picture = _Picture(img.size, "A" in img.getbands() or "transparency" in img.info)
        try:
            img.verify()
        except (OSError, SyntaxError, ValueError) as exc:
            raise ValueError(f"{given!r} is not a readable image ({type(exc).__name__})") from exc
    return picture


ImageFile = Annotated[Path, AfterValidator(_existing_image), Field(json_schema_extra={"kind": "image"})]


def picture_size(path: Path) -> tuple[int, int]:
    """A picture's width and height, read from its header."""
    return _read(path).size


def has_alpha(path: Path) -> bool:
    """Whether a picture has transparency, which inpainting can use as its mask."""
    return _read(path).has_alpha


@dataclass(frozen=True)
class _Mask:
    """What check_mask needs of a mask picture, decoded once."""

    size: tuple[int, int]
    has_alpha: bool
    extrema: tuple[tuple[int, int], ...]  # each of red, green, blue and alpha's lowest and highest value


def _decode_mask(path: Path) -> _Mask:
    """Decode a mask and measure each of its channels."""
    from PIL import Image

    with Image.open(path) as picture:
        extrema = cast("tuple[tuple[int, int], ...]", picture.convert("RGBA").getextrema())  # one pair a band
        return _Mask(picture.size, "A" in picture.getbands(), extrema)


@functools.lru_cache(maxsize=PICTURES_KEPT)
def _decode_unchanged_mask(key: _FileKey) -> _Mask:
    """The mask decoded once per unchanged file."""
    return _decode_mask(Path(key[0]))


def check_mask(image: Path, mask: Path, channel: str) -> None:
    """Refuse masks that would silently do nothing; note size differences (ComfyUI rescales them)."""
    key = _unchanged_key(mask)
    decoded = _decode_mask(mask) if key is None else _decode_unchanged_mask(key)
    if channel == "alpha" and not decoded.has_alpha:
        raise ValueError(f"mask {mask.name!r} has no alpha channel; use mask_channel=red for a black "
                         "and white mask")
    low, high = decoded.extrema["RGBA".index(channel[0].upper())]
    empty = high == 0 if channel != "alpha" else low == 255
    if empty:
        raise ValueError(f"mask {mask.name!r} marks nothing to repaint (its {channel} channel is all "
                         f"{'black' if channel != 'alpha' else 'opaque'})")
    width, height = picture_size(image)  # measured when the image was validated
    if decoded.size != (width, height):
        warnings.warn(f"mask {mask.name!r} is {decoded.size[0]}x{decoded.size[1]} but the image is "
                      f"{width}x{height}; ComfyUI stretches the mask to fit", MaskResizedWarning, stacklevel=2)
