"""The server's API keys (several, for rotation) and the calls its tokens have started.

Rotation: the first key signs new session tokens; every key listed is accepted,
as a key and for the tokens it signed (found by the key id in the token). To
rotate, put the new key first, keep the old one until its tokens have expired
and its callers have moved, then remove it.

Sans-I/O: nothing here reads the environment or the clock.
"""

from __future__ import annotations

import hmac
import json
from collections import OrderedDict
from dataclasses import dataclass, field

from agent.tokens import AUDIENCES, KEY_ID_PATTERN, TokenClaims, read_token
from pipeline.errors import ConfigurationError

MIN_KEY_CHARS = 32
"""``openssl rand -hex 16`` gives 32 characters (128 bits); shorter keys are guessable
at the rate a server answers handshakes."""
PLACEHOLDER_MARKERS = ("change-me", "changeme", "replace-me", "your-key", "your_key",
                       "example", "placeholder", "xxxx", "secret-key")
"""Words of sample values (``.env.example``, docs): a key containing one was copied, not made."""
DEFAULT_KEY_ID = "default"


@dataclass(frozen=True, slots=True)
class ApiKey:
    key_id: str
    secret: str = field(repr=False)


def check_key_strength(name: str, secret: str) -> None:
    """Refuse keys a caller could guess: short ones and copied placeholders."""
    lowered = secret.lower()
    for marker in PLACEHOLDER_MARKERS:
        if marker in lowered:
            raise ConfigurationError(
                f"{name} looks like a placeholder (it contains {marker!r}); make a real key, "
                "e.g. `openssl rand -hex 32`"
            )
    if len(secret) < MIN_KEY_CHARS:
        raise ConfigurationError(
            f"{name} is {len(secret)} characters; keys need at least {MIN_KEY_CHARS} "
            "(e.g. `openssl rand -hex 32`)"
        )


def parse_keys(name: str, text: str) -> tuple[ApiKey, ...]:
    """Keys written one per entry as ``id:secret`` (or ``id=secret``), entries separated
    by newlines or commas; blank lines and ``#`` comments are skipped. Never echoes a secret."""
    keys: list[ApiKey] = []
    entries = [part for line in text.splitlines() for part in line.split(",")]
    for number, raw in enumerate(entries, 1):
        entry = raw.strip()
        if not entry or entry.startswith("#"):
            continue
        separator = min((i for i in (entry.find(":"), entry.find("=")) if i > 0), default=-1)
        if separator < 0:
            raise ConfigurationError(f"{name}: entry {number} is not `id:secret`")
        key_id, secret = entry[:separator].strip(), entry[separator + 1 :].strip()
        if not KEY_ID_PATTERN.fullmatch(key_id):
            raise ConfigurationError(
                f"{name}: entry {number}: a key id is 1 to 32 letters, digits, '-' or '_'"
            )
        if not secret:
            raise ConfigurationError(f"{name}: key {key_id!r} is blank")
        keys.append(ApiKey(key_id, secret))
    if not keys:
        raise ConfigurationError(f"{name} lists no key")
    ids = [key.key_id for key in keys]
    if len(set(ids)) != len(ids):
        raise ConfigurationError(f"{name}: key ids must be unique")
    return tuple(keys)


@dataclass(frozen=True, slots=True)
class KeyRing:
    """The accepted keys; the first signs new tokens."""

    keys: tuple[ApiKey, ...]

    def __post_init__(self) -> None:
        if not self.keys:
            raise ValueError("a key ring holds at least one key")

    @classmethod
    def of(cls, credential: str | KeyRing) -> KeyRing:
        """A ring as given, or a single key (id ``default``)."""
        return credential if isinstance(credential, KeyRing) else cls((ApiKey(DEFAULT_KEY_ID,
                                                                               credential),))

    @property
    def signing(self) -> ApiKey:
        return self.keys[0]

    def secrets(self) -> list[str]:
        return [key.secret for key in self.keys]

    def matching_key(self, presented: str) -> ApiKey | None:
        """The key equal to ``presented``; every key is compared (constant time each)."""
        found: ApiKey | None = None
        for key in self.keys:
            if hmac.compare_digest(presented.encode(), key.secret.encode()):
                found = key
        return found

    def secret_for(self, key_id: str) -> str | None:
        return next((key.secret for key in self.keys if key.key_id == key_id), None)

    def read_token(self, token: str, *, now: float) -> TokenClaims | None:
        return read_token(token, self.secret_for, now=now)


class CallLedger:
    """Calls started per token, so a token minted for N calls opens at most N here.

    Bounded: entries leave when their token expires; when ``max_tokens`` unexpired
    tokens are tracked, a token not seen before is refused (only a holder of the API
    key can mint tokens, so only one can fill it).
    """

    def __init__(self, max_tokens: int = 100_000) -> None:
        self.max_tokens = max_tokens
        self._used: OrderedDict[str, tuple[int, float]] = OrderedDict()
        """nonce → (calls started, expiry), in order of first use."""

    def __len__(self) -> int:
        return len(self._used)

    def use(self, claims: TokenClaims, now: float) -> bool:
        """Count one call for the token; False when it has none left."""
        self._forget_expired(now)
        used, expires_at = self._used.get(claims.nonce, (0, claims.expires_at))
        if used >= claims.max_calls:
            return False
        if used == 0 and len(self._used) >= self.max_tokens:
            return False
        self._used[claims.nonce] = (used + 1, expires_at)
        return True

    def _forget_expired(self, now: float) -> None:
        # In order of first use, not of expiry: an expired entry behind a live one
        # waits for it, at most a token's longest life (an hour).
        while self._used:
            nonce, (_, expires_at) = next(iter(self._used.items()))
            if expires_at > now:
                return
            del self._used[nonce]


calls_by_token = CallLedger()
"""This process's ledger: a token's call limit holds per server (replica)."""


BROWSER_AUDIENCE = ("ws", "webrtc")
"""What a token opens unless the mint asks otherwise: a telephony stream must be asked for."""


@dataclass(frozen=True, slots=True)
class MintRequest:
    ttl_s: float
    audience: tuple[str, ...]
    max_calls: int


def read_mint_request(body: bytes, *, max_ttl_s: float, max_calls: int) -> MintRequest:
    """``POST /v1/session-tokens``'s optional JSON body, under the server's caps:
    ``{"ttl_s": s, "audience": ["ws", "webrtc", "telephony"], "max_calls": n}``.
    Raises ValueError saying what is wrong."""
    asked: object = {}
    if body:
        try:
            asked = json.loads(body[:4096])
        except ValueError:
            raise ValueError("body must be a JSON object") from None
    if not isinstance(asked, dict):
        raise ValueError("body must be a JSON object")
    unknown = sorted(set(asked) - {"ttl_s", "audience", "max_calls"})
    if unknown:
        raise ValueError(f"unknown fields {unknown[:5]}; known: ttl_s, audience, max_calls")
    ttl = asked.get("ttl_s", max_ttl_s)
    if isinstance(ttl, bool) or not isinstance(ttl, int | float) or not ttl > 0:
        raise ValueError('"ttl_s" must be a positive number')
    audience = asked.get("audience", list(BROWSER_AUDIENCE))
    if (
        not isinstance(audience, list) or not audience
        or not all(isinstance(name, str) and name in AUDIENCES for name in audience)
    ):
        raise ValueError(f'"audience" must be a non-empty list of {list(AUDIENCES)}')
    calls = asked.get("max_calls", max_calls)
    if isinstance(calls, bool) or not isinstance(calls, int) or not 1 <= calls:
        raise ValueError('"max_calls" must be a positive integer')
    return MintRequest(min(max_ttl_s, float(ttl)), tuple(audience), min(calls, max_calls))
