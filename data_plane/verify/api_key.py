"""An API key in header `spec.name` (`in: header`) or query parameter `spec.name` (`in: query`)."""

from __future__ import annotations

from urllib.parse import parse_qsl

from data_plane.verify._common import encode_secrets, header, token_matches
from data_plane.verify.base import Answer, Inbound, Verifier, VerifyFailed
from providers.verify_spec import ApiKey


def build(spec: ApiKey) -> Verifier:
    secrets = encode_secrets(spec.secret)
    name = spec.name

    if spec.location == "header":
        lower = name.lower()

        def verify_header(inbound: Inbound) -> Answer | None:
            if not token_matches(secrets, header(inbound.headers, lower, name)):
                raise VerifyFailed("api key mismatch")
            return None

        return verify_header

    def verify_query(inbound: Inbound) -> Answer | None:
        query = inbound.url.partition("?")[2].partition("#")[0]
        given = None
        for key, value in parse_qsl(query, keep_blank_values=True):
            if key == name:
                given = value
                break
        if not given:
            raise VerifyFailed(f"missing query parameter {name}")
        if not token_matches(secrets, given):
            raise VerifyFailed("api key mismatch")
        return None

    return verify_query
