"""What simulated work costs: pure arithmetic on the recorded GPU timings."""

from __future__ import annotations

import pytest

from comfy_orchestrator.sim import Costs, profile

STEP = Costs(step_s=1.0, batch_step_factor=0.1)


@pytest.mark.parametrize(("width", "height", "batch", "steps"), [
    (512, 512, 1, 1.0),
    (256, 256, 1, 0.25),  # below 512x512 the cost shrinks with the pixels
    (512, 512, 8, 1.7),  # each extra image adds a tenth of a step
    (1024, 1024, 1, 1.3),  # 4x the pixels: three more 512x512s' worth, a tenth each
    (2048, 2048, 1, 2.5),
    (1024, 1024, 2, 1.43),
])
def test_a_step_grows_with_the_pixels_as_a_batch_does(width, height, batch, steps) -> None:
    assert STEP.step_cost_s(width * height, batch) == pytest.approx(steps)


def test_more_pixels_never_cost_less() -> None:
    sides = range(64, 4097, 64)
    costs = [STEP.step_cost_s(side * side, 1) for side in sides]
    assert costs == sorted(costs)


def test_the_realistic_profile_puts_sdxl_at_1024_near_the_recorded_ratio() -> None:
    realistic = profile("realistic")
    ratio = realistic.step_cost_s(1024 * 1024, 1) / realistic.step_cost_s(512 * 512, 1)
    assert 1.1 < ratio < 2.0  # a random SDXL at 1024 took 1.1-2.0x SD1.5's 512 prompt on an H200
    assert realistic.vae_cost_s(1024 * 1024, 1) == pytest.approx(4 * realistic.vae_cost_s(512 * 512, 1))
