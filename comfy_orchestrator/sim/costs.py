"""How long simulated work takes: model loads, sampler steps, VAE passes."""

from __future__ import annotations

from dataclasses import dataclass, replace

from comfy_orchestrator.errors import ParameterError

REFERENCE_PIXELS = 512 * 512


@dataclass(frozen=True)
class Costs:
    """Seconds the simulator spends on each kind of work (0 everywhere: instant)."""

    checkpoint_load_s: float = 0.0  # first use of a checkpoint, every switch, and after /free
    first_sample_warmup_s: float = 0.0  # the first sampler run after a load (weights to the GPU)
    step_s: float = 0.0  # one sampler step of one 512x512 image
    batch_step_factor: float = 0.1  # each extra image of a batch adds this share of a step
    vae_s: float = 0.0  # one VAE encode or decode of one 512x512 image
    text_encode_s: float = 0.0
    image_io_s: float = 0.0  # loading or saving one image

    def step_cost_s(self, pixels: int, batch: int) -> float:
        """Seconds for one sampler step over `batch` images of `pixels` each.

        Above 512x512 a step grows as a batch does: one prompt leaves an H200 launch-bound, so
        each further 512x512 worth of pixels adds `batch_step_factor` of a step (recorded: batch 8
        costs 1.6x batch 1 per step; a random SDXL at 1024x1024 ran 20 steps, decode and save in
        1.55-1.61 s against SD1.5 512x512's 0.77-1.43 s). Below it the cost shrinks with the pixels.
        """
        share = pixels / REFERENCE_PIXELS
        size = share if share <= 1.0 else 1.0 + self.batch_step_factor * (share - 1.0)
        return self.step_s * size * (1.0 + self.batch_step_factor * (batch - 1))

    def vae_cost_s(self, pixels: int, batch: int) -> float:
        """Seconds for one VAE pass over `batch` images of `pixels` each."""
        return self.vae_s * batch * pixels / REFERENCE_PIXELS

    def scaled(self, factor: float) -> Costs:
        """The same costs, `factor` times faster (>1) or slower (<1)."""
        return replace(
            self,
            checkpoint_load_s=self.checkpoint_load_s / factor,
            first_sample_warmup_s=self.first_sample_warmup_s / factor,
            step_s=self.step_s / factor,
            vae_s=self.vae_s / factor,
            text_encode_s=self.text_encode_s / factor,
            image_io_s=self.image_io_s / factor,
        )


# From shared/comfyui-reference/timings.json (H200, SD1.5, 512x512): loader node 1.7-2.2 s cold,
# first KSampler 4.1-6.3 s (of which ~1.3 s sampling), warm prompt (a) 1.43 s with 15.5 it/s,
# batch 8 costing 1.6x batch 1 per step.
PROFILES: dict[str, Costs] = {
    "instant": Costs(),
    "realistic": Costs(
        checkpoint_load_s=2.0,
        first_sample_warmup_s=3.5,
        step_s=1.0 / 15.5,
        batch_step_factor=0.09,
        vae_s=0.03,
        text_encode_s=0.01,
        image_io_s=0.01,
    ),
}


def profile(name: str) -> Costs:
    """The named cost profile: "instant" (tests) or "realistic" (as recorded on a GPU)."""
    try:
        return PROFILES[name]
    except KeyError:
        raise ParameterError(f"unknown sim profile {name!r}; choose one of {', '.join(PROFILES)}",
                             parameter="profile") from None
