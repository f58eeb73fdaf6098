"""Settings from the environment; read only by the command line.

A frozen pydantic model filled from the environment by `Settings.from_environment`. Not
pydantic-settings' BaseSettings: loading that library cost every command 15-30 ms of CPU to
read three variables.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from pydantic import BaseModel, ConfigDict, SecretStr

# each field and the variable it is read from; a variable's name is matched in any case
VARIABLES = {"comfy_url": "COMFY_URL", "comfy_token": "COMFY_TOKEN", "templates": "COMFY_ORCH_TEMPLATES"}


class Settings(BaseModel):
    """What the environment says: COMFY_URL, COMFY_TOKEN, COMFY_ORCH_TEMPLATES."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    comfy_url: str | None = None
    comfy_token: SecretStr | None = None
    templates: str = ""

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """The settings `environ` (default: this process's environment) gives."""
        given = {name.upper(): value for name, value in (os.environ if environ is None else environ).items()}
        return cls.model_validate({field: given[variable] for field, variable in VARIABLES.items()
                                   if variable in given})

    def url(self) -> str:
        """The server $COMFY_URL names, else the client's default."""
        # imported here: commands that talk to no server (templates, render) load no HTTP code
        from comfy_orchestrator.client import DEFAULT_URL

        return self.comfy_url or DEFAULT_URL

    def token(self) -> str | None:
        """The bearer token for servers named by URL, if $COMFY_TOKEN gives one."""
        return self.comfy_token.get_secret_value() if self.comfy_token is not None else None

    def template_folders(self) -> list[str]:
        """The folders $COMFY_ORCH_TEMPLATES lists (os.pathsep between them)."""
        return [folder for folder in self.templates.split(os.pathsep) if folder]
