"""`python -m comfy_orchestrator.cli`: the same as `comfy-orch`."""

from comfy_orchestrator.cli import entry

entry()
