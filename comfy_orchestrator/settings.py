"""Settings from the environment; read only by the command line."""

from __future__ import annotations

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_SERVER = "http://127.0.0.1:8188"


class Settings(BaseSettings):
    """What the environment says: COMFY_URL, COMFY_TOKEN, COMFY_ORCH_TEMPLATES."""

    model_config = SettingsConfigDict(frozen=True, extra="ignore", env_prefix="", populate_by_name=True)

    comfy_url: str = Field(DEFAULT_SERVER, validation_alias="COMFY_URL")
    comfy_token: SecretStr | None = Field(None, validation_alias="COMFY_TOKEN")
    templates: str = Field("", validation_alias="COMFY_ORCH_TEMPLATES")
