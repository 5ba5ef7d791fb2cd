"""GitLab: the shared token comes back verbatim in `X-Gitlab-Token`; nothing is signed."""

from __future__ import annotations

from data_plane.verify._common import encode_secrets, header, token_matches
from data_plane.verify.base import Answer, Inbound, Verifier, VerifyFailed
from providers.verify_spec import GitLab

_HEADER = "x-gitlab-token"
_DISPLAY = "X-Gitlab-Token"


def build(spec: GitLab) -> Verifier:
    secrets = encode_secrets(spec.secret)

    def verify(inbound: Inbound) -> Answer | None:
        if not token_matches(secrets, header(inbound.headers, _HEADER, _DISPLAY)):
            raise VerifyFailed("token mismatch")
        return None

    return verify
