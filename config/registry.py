"""The services the proxy can reach, as data (values from shared/providers.md).

Adding a provider or a service means adding a row here; no code path changes.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Mapping

VERSION = "1.0.0"
USER_AGENT = f"byok-proxy/{VERSION}"
KINDS = ("chat", "completion", "embedding", "rerank", "tokens")


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
    # The provider's own request id, passed on as X-Upstream-Request-ID: the first of these
    # headers the answer holds (none documented: the common one, passed on if it comes).
    request_id_headers: tuple[str, ...] = ("x-request-id",)
    # Name of a function in proxy/translations.py that reads a wait from an error body, for a
    # provider that states it only there; it becomes Retry-After.
    retry_after_from_body: str | None = None


@dataclass(frozen=True)
class Service:
    name: str
    provider: str
    path: str  # joined to the provider's base URL; "{model}" is filled from payload.model
    kind: str  # one of KINDS
    streams: bool = False
    # Where a streamed call goes, for a provider that streams from another path; the payload's
    # `stream` then only picks the path and is not sent.
    stream_path: str | None = None
    # Name of a request/response translation in proxy/translations.py, for a service
    # whose upstream API differs from the one it offers clients.
    translation: str | None = None
    # Name of the reader in proxy/usage.py that finds the token counts in its answers.
    usage: str = "openai"

    @property
    def model_in_path(self) -> bool:
        return "{model}" in self.path


PROVIDERS: Mapping[str, Provider] = MappingProxyType({p.name: p for p in (
    Provider("openai", "https://api.openai.com/v1", "OPENAI_BASE_URL",
             "Authorization", "Bearer ",
             option_headers=("OpenAI-Organization", "OpenAI-Project")),
    Provider("anthropic", "https://api.anthropic.com", "ANTHROPIC_BASE_URL",
             "x-api-key", default_headers={"anthropic-version": "2023-06-01"},
             option_headers=("anthropic-version", "anthropic-beta"),
             request_id_headers=("request-id",)),
    Provider("jina", "https://api.jina.ai/v1", "JINA_BASE_URL", "Authorization", "Bearer "),
    Provider("cohere", "https://api.cohere.com", "CO_API_URL", "Authorization", "Bearer "),
    # The version is in the paths; the key only ever in its header, never in ?key=.
    Provider("google", "https://generativelanguage.googleapis.com", "GOOGLE_GEMINI_BASE_URL",
             "x-goog-api-key", retry_after_from_body="google_retry_info"),
    Provider("mistral", "https://api.mistral.ai", "MISTRAL_BASE_URL", "Authorization", "Bearer ",
             request_id_headers=("mistral-correlation-id",)),
    Provider("deepseek", "https://api.deepseek.com", "DEEPSEEK_BASE_URL",
             "Authorization", "Bearer ", request_id_headers=("x-ds-trace-id", "x-request-id")),
    Provider("openrouter", "https://openrouter.ai/api/v1", "OPENROUTER_BASE_URL",
             "Authorization", "Bearer ",
             option_headers=("HTTP-Referer", "X-OpenRouter-Title", "X-Title",
                             "X-OpenRouter-Categories"),
             request_id_headers=("x-generation-id",)),
    Provider("groq", "https://api.groq.com", "GROQ_BASE_URL", "Authorization", "Bearer "),
    Provider("voyage", "https://api.voyageai.com/v1", "VOYAGE_BASE_URL",
             "Authorization", "Bearer "),
)})

# Every provider's option headers, each once: the ones a client may send (contract §5).
OPTION_HEADERS: tuple[str, ...] = tuple(dict.fromkeys(
    name for provider in PROVIDERS.values() for name in provider.option_headers))

SERVICES: Mapping[str, Service] = MappingProxyType({s.name: s for s in (
    Service("openai_chat", "openai", "/chat/completions", "chat", streams=True),
    Service("openai_responses", "openai", "/responses", "chat", streams=True,
            usage="openai_responses"),
    Service("openai_embedding", "openai", "/embeddings", "embedding"),
    Service("anthropic_claude", "anthropic", "/v1/messages", "chat", streams=True,
            usage="anthropic"),
    Service("anthropic_count_tokens", "anthropic", "/v1/messages/count_tokens", "tokens",
            usage="anthropic"),
    Service("jina_embedding", "jina", "/embeddings", "embedding"),
    Service("jina_rerank", "jina", "/rerank", "rerank"),
    # Cohere removed /v1/generate on 2025-09-15; the service lives on through chat.
    Service("cohere_generate", "cohere", "/v2/chat", "completion",
            translation="cohere_generate", usage="cohere"),
    Service("cohere_chat", "cohere", "/v2/chat", "chat", streams=True, usage="cohere"),
    Service("cohere_embed", "cohere", "/v2/embed", "embedding", usage="cohere"),
    Service("cohere_rerank", "cohere", "/v2/rerank", "rerank", usage="cohere"),
    # {model} is "models/<id>" or "tunedModels/<id>", checked (proxy/upstream.py).
    Service("gemini_generate", "google", "/v1beta/{model}:generateContent", "chat",
            streams=True, stream_path="/v1beta/{model}:streamGenerateContent?alt=sse",
            usage="gemini"),
    Service("gemini_embedding", "google", "/v1beta/{model}:batchEmbedContents", "embedding",
            usage="gemini"),
    Service("gemini_count_tokens", "google", "/v1beta/{model}:countTokens", "tokens",
            usage="gemini"),
    Service("mistral_chat", "mistral", "/v1/chat/completions", "chat", streams=True),
    Service("mistral_fim", "mistral", "/v1/fim/completions", "completion", streams=True),
    Service("mistral_embedding", "mistral", "/v1/embeddings", "embedding"),
    Service("deepseek_chat", "deepseek", "/chat/completions", "chat", streams=True),
    Service("deepseek_fim", "deepseek", "/beta/completions", "completion", streams=True),
    Service("openrouter_chat", "openrouter", "/chat/completions", "chat", streams=True),
    Service("groq_chat", "groq", "/openai/v1/chat/completions", "chat", streams=True),
    Service("voyage_embedding", "voyage", "/embeddings", "embedding"),
    Service("voyage_rerank", "voyage", "/rerank", "rerank"),
)})

for _service in SERVICES.values():
    if _service.provider not in PROVIDERS:
        raise RuntimeError(f"service {_service.name} names unknown provider {_service.provider}")
    if _service.kind not in KINDS:
        raise RuntimeError(f"service {_service.name} has unknown kind {_service.kind}")
