"""OIDC bearer tokens from the bureau's identity provider, checked with PyJWT against the JWKS the
operator configures (``GEOTWIN_OIDC_JWKS``: a local file, or a URL on the intranet), with issuer and
audience when set. The caller's role comes from a claim (``GEOTWIN_OIDC_ROLE_CLAIM``, a string or a
list; the most capable known role wins). A token without a known role is refused. A community
worker's community comes from ``GEOTWIN_OIDC_COMMUNITY_CLAIM`` (default ``geotwin_community``); a
``community-worker`` token without it is refused."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import jwt

from spatial_api.security.roles import ROLES, highest

ALGORITHMS = ["RS256", "RS384", "RS512", "ES256", "ES384", "PS256"]


class TokenError(ValueError):
    pass


class OIDCVerifier:
    def __init__(self, jwks: str, *, issuer: str | None, audience: str | None, role_claim: str,
                 community_claim: str = "geotwin_community"):
        self.source, self.issuer, self.audience, self.role_claim = jwks, issuer, audience, role_claim
        self.community_claim = community_claim
        self._keys: jwt.PyJWKSet | None = None
        self._loaded = 0.0
        self._lock = threading.Lock()

    def _jwks(self, refresh: bool = False) -> jwt.PyJWKSet:
        with self._lock:
            if self._keys is None or refresh or time.monotonic() - self._loaded > 300:
                if self.source.startswith(("http://", "https://")):
                    import urllib.request

                    with urllib.request.urlopen(self.source, timeout=5) as r:  # noqa: S310 — operator's URL
                        data = json.loads(r.read())
                else:
                    data = json.loads(Path(self.source).read_text())
                self._keys = jwt.PyJWKSet.from_dict(data)
                self._loaded = time.monotonic()
            return self._keys

    def verify(self, token: str) -> tuple[str, str]:
        """(name, role) of a valid token; raises TokenError with the reason otherwise."""
        name, role, _ = self.identify(token)
        return name, role

    def identify(self, token: str) -> tuple[str, str, str | None]:
        """(name, role, community) of a valid token; raises TokenError with the reason otherwise."""
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise TokenError(f"not a JWT: {exc}") from None
        kid = header.get("kid")
        try:
            keys = self._jwks()
            key = next((k for k in keys.keys if k.key_id == kid), None)
            if key is None:  # the provider may have rotated its keys
                keys = self._jwks(refresh=True)
                key = next((k for k in keys.keys if k.key_id == kid), None)
        except (OSError, ValueError, jwt.PyJWTError) as exc:
            raise TokenError(f"the identity provider's keys (GEOTWIN_OIDC_JWKS) cannot be read: {exc}") from None
        if key is None:
            raise TokenError(f"token signed with an unknown key id {kid!r}")
        try:
            claims = jwt.decode(token, key=key.key, algorithms=ALGORITHMS, audience=self.audience,
                                issuer=self.issuer, options={"require": ["exp", "sub"],
                                                             "verify_aud": self.audience is not None})
        except jwt.PyJWTError as exc:
            raise TokenError(f"token refused: {exc}") from None
        raw = claims.get(self.role_claim)
        role = highest([raw] if isinstance(raw, str) else list(raw or []))
        if role is None:
            raise TokenError(f"token has no geotwin role in claim {self.role_claim!r} (one of {', '.join(ROLES)})")
        name = claims.get("preferred_username") or claims["sub"]
        community = claims.get(self.community_claim)
        community = community.strip() if isinstance(community, str) and community.strip() else None
        if role == "community-worker" and community is None:
            raise TokenError(f"a community-worker token needs its community in claim {self.community_claim!r} "
                             "(e.g. \"坂田社区\")")
        return str(name), role, community
