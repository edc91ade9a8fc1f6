"""Providers answer the local batch executor's requests: a deterministic mock, or an
OpenAI-compatible HTTP endpoint (Ollama, vLLM). All speak Gemini JSON in and out."""

from __future__ import annotations

from typing import Any, Callable

from batchflow.batch.providers.base import BaseProvider, Provider, ProviderResult, error_status, row_error
from batchflow.errors import ConfigError

__all__ = ["PROVIDERS", "BaseProvider", "Provider", "ProviderResult", "error_status", "make_provider", "row_error"]


def _mock(options: dict) -> Provider:
    from batchflow.batch.providers.mock import MockProvider

    return MockProvider(options)


def _openai(options: dict) -> Provider:
    from batchflow.batch.providers.openai import OpenAIProvider

    return OpenAIProvider(options)


#: provider name → factory taking the provider's options.
PROVIDERS: dict[str, Callable[[dict], Provider]] = {"mock": _mock, "openai": _openai}


def make_provider(config: dict[str, Any] | None) -> Provider:
    """Build the provider named by `config["provider"]` (default "mock").

    Options are the top-level keys (other than `provider` and the provider-name sections), overridden
    by the provider's own section, e.g. ``{"provider": "openai", "openai": {"base_url": ...}}``.
    """
    config = dict(config or {})
    name = config.get("provider", "mock")
    if name not in PROVIDERS:
        raise ConfigError(
            f"unknown batch provider {name!r}; choose one of: {', '.join(sorted(PROVIDERS))}"
        )
    section = config.get(name) or {}
    if not isinstance(section, dict):
        raise ConfigError(f"provider options `{name}` must be a mapping, got {type(section).__name__}")
    options = {k: v for k, v in config.items() if k != "provider" and k not in PROVIDERS}
    options.update(section)
    return PROVIDERS[name](options)
