"""Pictures opened within Limits.image_pixels (open_picture, also for those a server sends); the local pictures
a job takes as input: checked when parameters are validated, measured, masks checked.

The checks raise ValueError, as pydantic validators do; the model turns them into a ParameterError.
A picture is read once while it stays as it is on disk (same path, size and modification time):
a sweep validates its input picture for every cell.
"""

from __future__ import annotations

import functools
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

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


PICTURES_KEPT = 64  # pictures whose reading is remembered, by path, size and modification time


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


def _read(path: Path) -> _Picture:
    """The picture at `path`, checked and measured; read again only when the file changed."""
    stat = path.stat()
    return _read_unchanged(str(path.resolve()), stat.st_size, stat.st_mtime_ns, str(path))


@functools.lru_cache(maxsize=PICTURES_KEPT)
def _read_unchanged(resolved: str, size_bytes: int, mtime_ns: int, given: str) -> _Picture:
    """Read and verify a picture; the file's size and modification time make a changed file a new key."""
    with open_picture(resolved, limit=Limits().image_pixels, what=repr(given), advice="; scale it down first") as img:
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


def check_mask(image: Path, mask: Path, channel: str) -> None:
    """Refuse masks that would silently do nothing; note size differences (ComfyUI rescales them)."""
    from PIL import Image

    with Image.open(mask) as picture:
        bands = picture.getbands()
        if channel == "alpha" and "A" not in bands:
            raise ValueError(f"mask {mask.name!r} has no alpha channel; use mask_channel=red for a black "
                             "and white mask")
        band = picture.convert("RGBA").getchannel(channel[0].upper())
        low, high = band.getextrema()
        empty = high == 0 if channel != "alpha" else low == 255
        if empty:
            raise ValueError(f"mask {mask.name!r} marks nothing to repaint (its {channel} channel is all "
                             f"{'black' if channel != 'alpha' else 'opaque'})")
        width, height = picture_size(image)  # measured when the image was validated
        if picture.size != (width, height):
            warnings.warn(f"mask {mask.name!r} is {picture.size[0]}x{picture.size[1]} but the image is "
                          f"{width}x{height}; ComfyUI stretches the mask to fit", MaskResizedWarning, stacklevel=2)
