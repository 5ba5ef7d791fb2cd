"""The three resource kinds of `whplane/v1`: Namespace, Connection and Webhook.

A resource is identified by its `ResourceKey` (kind, namespace, name). Namespaces are global;
a Connection without `metadata.namespace` is global and usable from every namespace; a Webhook
always lives in a namespace.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, NamedTuple, Protocol, TypeVar

from pydantic import AfterValidator, Field, model_validator

from providers.connection_spec import (
    DEFAULT_CIRCUIT,
    CircuitField,
    DestinationConnectionSpec,
    secret_headers,
)
from providers.model import Name, Referable, Seconds, model, shared
from providers.payload_schema import check as check_payload_schema
from providers.step_spec import Step
from providers.verify_spec import Verify

API_VERSION = "whplane/v1"
KINDS = ("Namespace", "Connection", "Webhook")
Kind = Literal["Namespace", "Connection", "Webhook"]
GLOBAL = "_global"
V = TypeVar("V")
V_co = TypeVar("V_co", covariant=True)


class ResourceKey(NamedTuple):
    kind: str
    namespace: str | None
    name: str

    def __str__(self) -> str:
        return f"{self.kind}/{self.namespace or GLOBAL}/{self.name}"


@model
class Metadata:
    name: Name
    namespace: Name | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)
    generation: int | None = Field(
        default=None, ge=1, description="set by the control plane; ignored on input"
    )
    revision: int | None = Field(
        default=None, ge=1, description="set by the control plane: the config revision that "
        "wrote this version; ignored on input",
    )
    sandbox: bool = Field(
        default=False,
        description="set by the control plane: true when a namespace token wrote the resource, "
        "which gateways then hold to the tenant rules; ignored on input",
    )


# --- Namespace ---------------------------------------------------------------------------


@model
class NamespaceLimits:
    rate_per_second: float | None = Field(default=None, gt=0)
    burst: int | None = Field(default=None, gt=0)


@model
class NamespaceSpec:
    description: str = ""
    limits: NamespaceLimits = shared(NamespaceLimits())


@model
class Namespace:
    apiVersion: Literal["whplane/v1"]
    kind: Literal["Namespace"]
    metadata: Metadata
    spec: NamespaceSpec = shared(NamespaceSpec())

    @model_validator(mode="after")
    def _global(self) -> Namespace:
        if self.metadata.namespace is not None:
            raise ValueError("a Namespace is global: remove metadata.namespace")
        return self


# --- Connection --------------------------------------------------------------------------


@model
class HttpConnectionSpec:
    type: Literal["http"]
    url: Referable = Field(
        pattern=r"^(https?://|\{\$|<\$vault:)",
        description="http:// or https:// base URL (or a reference resolving to one)",
    )
    headers: dict[str, Referable] = Field(default_factory=dict)
    timeout_s: Seconds = 10
    verify_tls: bool = True
    allow_private: bool = Field(
        default=False,
        description="allow loopback, private, link-local and metadata addresses (SSRF guard)",
    )
    max_connections: int = Field(default=100, gt=0, le=10000)
    circuit: CircuitField = shared(DEFAULT_CIRCUIT)

    def secret_fields(self) -> dict[str, str]:
        return secret_headers(self.headers)


@model
class RedisConnectionSpec:
    type: Literal["redis"]
    url: Referable = Field(
        pattern=r"^(redis://|rediss://|unix://|\{\$|<\$vault:)",
        description="redis://, rediss:// or unix:// URL (or a reference resolving to one)",
    )
    username: Referable | None = None
    password: Referable | None = None
    timeout_s: Seconds = 5
    circuit: CircuitField = shared(DEFAULT_CIRCUIT)

    def secret_fields(self) -> dict[str, str]:
        return {"password": self.password} if self.password is not None else {}


ConnectionSpec = Annotated[
    HttpConnectionSpec | RedisConnectionSpec | DestinationConnectionSpec,
    Field(discriminator="type"),
]


@model
class Connection:
    apiVersion: Literal["whplane/v1"]
    kind: Literal["Connection"]
    metadata: Metadata
    spec: ConnectionSpec


# --- Webhook -----------------------------------------------------------------------------


@model
class WebhookLimits:
    max_body_bytes: int = Field(default=1_048_576, gt=0, le=64 * 1_048_576)
    max_json_depth: int = Field(default=64, gt=0, le=1000)
    rate_per_second: float | None = Field(default=None, gt=0)
    burst: int | None = Field(default=None, gt=0)


@model
class Retry:
    attempts: int = Field(default=5, ge=1, le=100)
    initial_delay_s: Seconds = 0.5
    max_delay_s: Seconds = 30

    @model_validator(mode="after")
    def _ordered(self) -> Retry:
        if self.max_delay_s < self.initial_delay_s:
            raise ValueError("max_delay_s must be at least initial_delay_s")
        return self


@model
class Delivery:
    mode: Literal["sync", "async"] = "sync"
    retry: Retry = shared(Retry())
    idempotency_header: str | None = Field(
        default=None,
        description="header carrying the sender's delivery id; repeats within "
        "idempotency_window_s are answered without delivering again",
    )
    idempotency_window_s: Seconds = 86400


@model
class Chain:
    mode: Literal["sequential", "parallel"] = "sequential"
    timeout_s: Seconds = 30
    continue_on_error: bool = False
    steps: tuple[Step, ...] = Field(min_length=1)


@model
class WebhookSpec:
    verify: Verify
    limits: WebhookLimits = shared(WebhookLimits())
    delivery: Delivery = shared(Delivery())
    chain: Chain
    payload_schema: Annotated[dict[str, Any], AfterValidator(check_payload_schema)] | None = (
        Field(
            default=None,
            description="JSON Schema the payload must match (JSON bodies only): local $refs "
            "only, RE2 patterns (no backreferences or lookaround)",
        )
    )

    def connections(self) -> tuple[str, ...]:
        return tuple(c for s in self.chain.steps if (c := getattr(s, "connection", None)))


@model
class Webhook:
    apiVersion: Literal["whplane/v1"]
    kind: Literal["Webhook"]
    metadata: Metadata
    spec: WebhookSpec

    @model_validator(mode="after")
    def _namespaced(self) -> Webhook:
        if self.metadata.namespace is None:
            raise ValueError("a Webhook lives in a namespace: set metadata.namespace")
        return self


Resource = Annotated[Namespace | Connection | Webhook, Field(discriminator="kind")]
AnyResource = Namespace | Connection | Webhook


def connection_keys(namespace: str | None, name: str) -> tuple[ResourceKey, ...]:
    """Where a step's connection `name` is looked up, in order: the webhook's namespace, then
    the global connections. The one place this rule is written."""
    global_key = ResourceKey("Connection", None, name)
    if namespace is None:
        return (global_key,)
    return (ResourceKey("Connection", namespace, name), global_key)


class Lookup(Protocol[V_co]):
    """Anything with `get` by resource key: a dict, a persistent map, a map being built."""

    def get(self, key: ResourceKey, /) -> V_co | None: ...


def find_connection(found: Lookup[V], namespace: str | None, name: str) -> V | None:
    """The value `found` holds for the connection a webhook in `namespace` means by `name`."""
    for key in connection_keys(namespace, name):
        value = found.get(key)
        if value is not None:
            return value
    return None


def key_of(resource: AnyResource) -> ResourceKey:
    return ResourceKey(resource.kind, resource.metadata.namespace, resource.metadata.name)


def secret_fields(resource: AnyResource) -> dict[str, str]:
    """Field path -> value of every field that holds a secret (must be a reference)."""
    if isinstance(resource, Webhook):
        v = resource.spec.verify
        secrets = getattr(v, "secret", ())
        out = {f"spec.verify.secret[{i}]": s for i, s in enumerate(secrets)}
        for i, step in enumerate(resource.spec.chain.steps):
            step_secrets = getattr(step, "secret_fields", None)
            if step_secrets is not None:  # e.g. a relay step's channel token
                out.update({f"spec.chain.steps[{i}].{k}": s for k, s in step_secrets().items()})
        return out
    if isinstance(resource, Connection):
        return {f"spec.{k}": s for k, s in resource.spec.secret_fields().items()}
    return {}
