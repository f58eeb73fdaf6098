"""The denoise guide: bands from 0.1 to 1.0 without gaps, found by their effect's name."""

from __future__ import annotations

import pytest

from comfy_orchestrator.denoise_guide import DENOISE_GUIDE, denoise_band
from comfy_orchestrator.errors import ParameterError


def test_denoise_guide_covers_zero_to_one_without_gaps() -> None:
    assert DENOISE_GUIDE[0].low == 0.1 and DENOISE_GUIDE[-1].high == 1.0
    for before, after in zip(DENOISE_GUIDE, DENOISE_GUIDE[1:]):
        assert before.high == after.low
    with pytest.raises(ParameterError, match="moderate"):
        denoise_band("huge")


@pytest.mark.parametrize(("name", "middle"), [("minimal", 0.2), (" Moderate ", 0.4), ("NEW", 0.95)])
def test_a_band_is_found_by_its_effect_and_has_a_middle(name, middle) -> None:
    band = denoise_band(name)
    assert band.name == name.strip().lower() and band.middle == middle
