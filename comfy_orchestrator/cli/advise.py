"""`comfy-orch advise`: the img2img guide's next values and sweep for a symptom."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import click

from comfy_orchestrator.cli.group import main
from comfy_orchestrator.cli.options import connect_client, library, set_option, template_values, transport_options
from comfy_orchestrator.cli.output import EXIT_BAD_INPUT, fail, line, stdout
from comfy_orchestrator.cli.values import find_inputs, set_dotted, sweep_of, with_families


def _symptom_option(name: str, text: str) -> Callable[..., Any]:
    return click.option(f"--{name}", "symptom", flag_value=name, help=text)


@main.command("advise")
@click.argument("template_name", metavar="TEMPLATE", required=False)
@_symptom_option("too-much-change", "the result strays too far from the input")
@_symptom_option("not-enough-change", "the result looks too much like the input")
@_symptom_option("artifacts", "seams, blotches or odd colours")
@_symptom_option("out-of-memory", "the GPU ran out of memory")
@click.option("--from", "from_image", type=click.Path(dir_okay=False, exists=True),
              help="the picture that went wrong, saved by comfy-orch (its parameters are the starting point)")
@set_option
@click.option("--server", default=None, metavar="URL",
              help="read the checkpoint's family and the VAE files from this server (else guessed, none)")
@click.option("--out", "out_dir", default=None, help="the suggested sweep's folder (default: advice-SYMPTOM)")
@transport_options
@click.pass_context
def advise_command(ctx: click.Context, template_name: str | None, symptom: str | None, from_image: str | None,
                   sets: Sequence[str], server: str | None, out_dir: str | None, ca_cert: Path | None,
                   allow_plain_http: bool) -> None:
    """Turn the guide's troubleshooting into next values for this job, and the sweep that tries them."""
    from comfy_orchestrator.advice import SYMPTOMS, advise
    from comfy_orchestrator.provenance import read_provenance

    if symptom is None:
        fail("say what went wrong: " + ", ".join(f"--{name}" for name in SYMPTOMS), EXIT_BAD_INPUT)
    values: dict[str, Any] = {}
    if from_image is not None:
        record = read_provenance(Path(from_image).read_bytes())
        if record is None or not record.get("template"):
            fail(f"{from_image} carries no comfy-orch template record; name the TEMPLATE and its --set values",
                 EXIT_BAD_INPUT)
        template_name = template_name or record["template"]
        values = dict(record.get("parameters") or {})
        for parameter, (_, path) in find_inputs(record, Path(from_image), set(template_values(sets))).items():
            set_dotted(values, parameter, str(path))
    if template_name is None:
        fail("name a TEMPLATE (see 'comfy-orch templates') or give --from IMAGE", EXIT_BAD_INPUT)
    values.update(template_values(sets))
    template = library(ctx).get(template_name)
    vaes: tuple[str, ...] = ()
    if server is not None:
        with connect_client(server, ca_cert, allow_plain_http) as client:
            template = with_families(template, values, client.model_family)
            vaes = tuple(str(name) for name in client.schema().choices("VAELoader", "vae_name"))
    else:
        template = with_families(template, values)
    params = template.params(values)
    advice = advise(symptom, template.name, params, vaes=vaes)  # type: ignore[arg-type]
    out = out_dir or f"advice-{symptom}"
    # build the suggested sweep here, so a command that would not validate is never printed
    sweep_of(library(ctx).get(advice.template).with_families(template.families), advice.axes,
              [f"{name}={value}" for name, value in advice.sets.items()], zipped=False, batch_seeds=False,
              seed_source=None).cells()
    stdout.print(line((symptom.replace("-", " "), "bold"), f" ({SYMPTOMS[symptom]}), {template.name}: "
                      f"denoise {params.denoise:g}, CFG {params.cfg:g}"))  # type: ignore[attr-defined]
    for remedy in advice.remedies:
        stdout.print(f"  - {remedy}")
    stdout.print(line(("explore them:", "bold")))
    stdout.print(advice.command(out=out, server=server))
