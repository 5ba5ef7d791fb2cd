"""`spec.verify` of a Webhook: one model per verification scheme, discriminated by `scheme`.

The data plane implements each scheme in `data_plane/verify/<scheme>.py`; this module only says
what an operator may write. Fields holding secrets are typed `Secrets` (a reference or a list of
them) so validation can insist that they are references.
"""

from __future__ import annotations

from ipaddress import ip_network
from typing import Annotated, Literal

from pydantic import AfterValidator, Field

from providers.model import Referable, Seconds, Secrets, model


def _cidr(value: str) -> str:
    try:
        ip_network(value, strict=False)
    except ValueError as exc:
        raise ValueError(f"not an IP network: {value!r}") from exc
    return value


Cidr = Annotated[str, AfterValidator(_cidr)]


@model
class _Base:
    ip_allow: tuple[Cidr, ...] = Field(
        default=(), description="source networks allowed to call; empty allows any"
    )
    trusted_proxies: tuple[Cidr, ...] = Field(
        default=(),
        description="proxies whose X-Forwarded-For is believed when checking ip_allow",
    )


@model
class _Timed(_Base):
    tolerance_s: Seconds = Field(default=300, description="accepted clock skew of the timestamp")


@model
class GitHub(_Base):
    scheme: Literal["github"]
    secret: Secrets


@model
class GitLab(_Base):
    scheme: Literal["gitlab"]
    secret: Secrets


@model
class Stripe(_Timed):
    scheme: Literal["stripe"]
    secret: Secrets


@model
class Slack(_Timed):
    scheme: Literal["slack"]
    secret: Secrets


@model
class Shopify(_Base):
    scheme: Literal["shopify"]
    secret: Secrets


@model
class Standard(_Timed):
    """Standard Webhooks (also Svix): `webhook-*` or `svix-*` headers, `whsec_` keys."""

    scheme: Literal["standard"]
    secret: Secrets


@model
class Twilio(_Base):
    scheme: Literal["twilio"]
    secret: Secrets
    algorithm: Literal["sha1", "sha256"] = "sha1"
    public_url: Referable | None = Field(
        default=None,
        description="the URL Twilio calls, when a proxy changes the one the gateway sees",
    )


@model
class Zoom(_Timed):
    scheme: Literal["zoom"]
    secret: Secrets


@model
class Hmac(_Timed):
    scheme: Literal["hmac"]
    secret: Secrets
    header: str = "X-Signature"
    algorithm: Literal["sha1", "sha256", "sha512"] = "sha256"
    encoding: Literal["hex", "base64"] = "hex"
    prefix: str = Field(default="", description="text before the digest, e.g. 'sha256='")
    timestamp_header: str | None = Field(
        default=None,
        description="when set, the signed bytes are '{timestamp}.{body}' and the timestamp "
        "must be within tolerance_s",
    )


@model
class Bearer(_Base):
    scheme: Literal["bearer"]
    secret: Secrets


@model
class Basic(_Base):
    scheme: Literal["basic"]
    username: Referable
    secret: Secrets = Field(description="the password")


@model
class ApiKey(_Base):
    scheme: Literal["api_key"]
    secret: Secrets
    location: Literal["header", "query"] = Field(default="header", alias="in")
    name: str = "X-API-Key"


@model
class Jwt(_Base):
    scheme: Literal["jwt"]
    secret: Secrets = Field(description="HS* shared secret, or PEM public key for RS*/ES*")
    algorithms: tuple[
        Literal["HS256", "HS384", "HS512", "RS256", "RS384", "RS512", "ES256", "ES384", "ES512"],
        ...,
    ] = ("HS256",)
    issuer: str | None = None
    audience: str | None = None
    leeway_s: float = Field(default=30, ge=0, le=3600)
    header: str = "Authorization"


@model
class NoVerify(_Base):
    scheme: Literal["none"]


Verify = Annotated[
    GitHub | GitLab | Stripe | Slack | Shopify | Standard | Twilio | Zoom | Hmac | Bearer | Basic
    | ApiKey | Jwt | NoVerify,
    Field(discriminator="scheme"),
]

SCHEMES = (
    "github", "gitlab", "stripe", "slack", "shopify", "standard", "twilio", "zoom", "hmac",
    "bearer", "basic", "api_key", "jwt", "none",
)  # fmt: skip
