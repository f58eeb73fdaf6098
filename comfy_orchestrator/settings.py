"""Settings from the environment; read only by the command line."""

from __future__ import annotations

import os

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from comfy_orchestrator.client import DEFAULT_URL


class Settings(BaseSettings):
    """What the environment says: COMFY_URL, COMFY_TOKEN, COMFY_ORCH_TEMPLATES."""

    model_config = SettingsConfigDict(frozen=True, extra="ignore", env_prefix="", populate_by_name=True)

    comfy_url: str = Field(DEFAULT_URL, validation_alias="COMFY_URL")
    comfy_token: SecretStr | None = Field(None, validation_alias="COMFY_TOKEN")
    templates: str = Field("", validation_alias="COMFY_ORCH_TEMPLATES")

    def token(self) -> str | None:
        """The bearer token for servers named by URL, if $COMFY_TOKEN gives one."""
        return self.comfy_token.get_secret_value() if self.comfy_token is not None else None

    def template_folders(self) -> list[str]:
        """The folders $COMFY_ORCH_TEMPLATES lists (os.pathsep between them)."""
        return [folder for folder in self.templates.split(os.pathsep) if folder]
