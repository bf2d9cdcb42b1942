"""The services the proxy can reach, as data (values from shared/providers.md).

Adding a provider or a service means adding a row here; no code path changes.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Mapping

VERSION = "1.0.0"
USER_AGENT = f"byok-proxy/{VERSION}"


@dataclass(frozen=True)
class Provider:
    name: str
    base_url: str  # as the provider's official SDK defines it
    base_url_env: str  # the variable that SDK reads to override it
    auth_header: str
    auth_prefix: str = ""
    default_headers: Mapping[str, str] = field(default_factory=dict)
    # Request headers a client may send that are passed on to this provider only.
    option_headers: tuple[str, ...] = ()


@dataclass(frozen=True)
class Service:
    name: str
    provider: str
    path: str  # joined to the provider's base URL
    streams: bool = False
    # Name of a request/response translation in proxy/translations.py, for a service
    # whose upstream API differs from the one it offers clients.
    translation: str | None = None


PROVIDERS: Mapping[str, Provider] = MappingProxyType({p.name: p for p in (
    Provider("openai", "https://api.openai.com/v1", "OPENAI_BASE_URL",
             "Authorization", "Bearer ",
             option_headers=("OpenAI-Organization", "OpenAI-Project")),
    Provider("anthropic", "https://api.anthropic.com", "ANTHROPIC_BASE_URL",
             "x-api-key", default_headers={"anthropic-version": "2023-06-01"},
             option_headers=("anthropic-version", "anthropic-beta")),
    Provider("jina", "https://api.jina.ai/v1", "JINA_BASE_URL", "Authorization", "Bearer "),
    Provider("cohere", "https://api.cohere.com", "CO_API_URL", "Authorization", "Bearer "),
)})

# Every provider's option headers, each once: the ones a client may send (contract §5).
OPTION_HEADERS: tuple[str, ...] = tuple(dict.fromkeys(
    name for provider in PROVIDERS.values() for name in provider.option_headers))

SERVICES: Mapping[str, Service] = MappingProxyType({s.name: s for s in (
    Service("openai_chat", "openai", "/chat/completions", streams=True),
    Service("openai_responses", "openai", "/responses", streams=True),
    Service("openai_embedding", "openai", "/embeddings"),
    Service("anthropic_claude", "anthropic", "/v1/messages", streams=True),
    Service("jina_embedding", "jina", "/embeddings"),
    # Cohere removed /v1/generate on 2025-09-15; the service lives on through chat.
    Service("cohere_generate", "cohere", "/v2/chat", translation="cohere_generate"),
    Service("cohere_chat", "cohere", "/v2/chat", streams=True),
    Service("cohere_embed", "cohere", "/v2/embed"),
)})

for _service in SERVICES.values():
    if _service.provider not in PROVIDERS:
        raise RuntimeError(f"service {_service.name} names unknown provider {_service.provider}")
