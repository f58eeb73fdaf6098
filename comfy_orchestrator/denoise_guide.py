"""The img2img guide's denoise bands: what each strength does, and the effect names users give ('moderate')."""

from __future__ import annotations

from dataclasses import dataclass

from comfy_orchestrator.errors import ParameterError


@dataclass(frozen=True)
class DenoiseBand:
    """One band of the denoise strength guide."""

    name: str
    low: float
    high: float
    effect: str

    @property
    def middle(self) -> float:
        return round((self.low + self.high) / 2, 2)


DENOISE_GUIDE: tuple[DenoiseBand, ...] = (
    DenoiseBand("minimal", 0.1, 0.3, "minimal change: subtle touch-ups, colour and texture"),
    DenoiseBand("moderate", 0.3, 0.5, "moderate change: keeps composition, restyles details"),
    DenoiseBand("significant", 0.5, 0.7, "significant change: new style, same layout"),
    DenoiseBand("major", 0.7, 0.9, "major change: loose reinterpretation of the input"),
    DenoiseBand("new", 0.9, 1.0, "almost a new image: the input barely shows"),
)


def denoise_band(name: str) -> DenoiseBand:
    """The guide's band for an effect name such as 'moderate'."""
    for band in DENOISE_GUIDE:
        if band.name == name.strip().lower():
            return band
    names = ", ".join(b.name for b in DENOISE_GUIDE)
    raise ParameterError(f"denoise: no effect named {name!r}; the guide knows {names}", parameter="denoise")

