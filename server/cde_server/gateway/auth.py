"""API keys: a TOML file of SHA-256 key hashes, each bound to a tenant, and the bearer check.

Keys file (`CDE_API_KEYS_FILE`; `cde keys new --tenant T` prints an entry)::

    [[keys]]
    tenant = "acme"              # letters, digits, '.', '_', '-' (no "/")
    key_sha256 = "9f86d0..."     # hex SHA-256 of the key; the key itself is never stored
    admin = false                # optional: may list every tenant's context sets

    [tenants.acme]               # optional per-tenant limits (override the CDE_ settings)
    rate_limit_rps = 20
    rate_limit_burst = 40
    max_streams = 4

`CDE_API_KEYS` adds keys without a file (e.g. from a Kubernetes Secret), as comma-separated
`tenant:sha256` or `tenant:sha256:admin` entries. With neither, authentication is off: every
caller is the tenant "" (bare names).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from cde_server.domain.names import is_valid_name
from cde_server.errors import UnauthenticatedError
from cde_server.private_files import warn_if_shared

AUTHORIZATION_HEADER = "authorization"
_BEARER = "bearer "
_KEY_PREFIX = "cde_"


class KeysFileError(ValueError):
    """The keys file cannot be read or is invalid."""


class TenantLimits(BaseModel):
    """Per-tenant overrides of the rate and stream limits (unset: the server's settings)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    rate_limit_rps: float | None = Field(default=None, ge=0)
    rate_limit_burst: int | None = Field(default=None, ge=0)
    max_streams: int | None = Field(default=None, ge=0)


class KeyEntry(BaseModel):
    """One API key: its hash, its tenant, whether it is an admin key."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    tenant: str
    key_sha256: str
    admin: bool = False
    note: str = ""

    @field_validator("tenant")
    @classmethod
    def _tenant_name(cls, value: str) -> str:
        if not is_valid_name(value):
            raise ValueError(
                f"invalid tenant {value!r}: use 1 to 64 letters, digits, '.', '_' or '-'"
            )
        return value

    @field_validator("key_sha256")
    @classmethod
    def _hex_digest(cls, value: str) -> str:
        value = value.strip().lower()
        if len(value) != 64 or any(c not in "0123456789abcdef" for c in value):
            raise ValueError("key_sha256 must be 64 hex digits (cde keys hash prints it)")
        return value


class KeysFile(BaseModel):
    """The parsed keys file."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    keys: tuple[KeyEntry, ...] = Field(min_length=1)
    tenants: dict[str, TenantLimits] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _consistent(self) -> KeysFile:
        hashes = [entry.key_sha256 for entry in self.keys]
        if len(set(hashes)) != len(hashes):
            raise ValueError("the same key_sha256 is listed twice")
        unknown = set(self.tenants) - {entry.tenant for entry in self.keys}
        if unknown:
            raise ValueError(f"[tenants] names tenants without keys: {', '.join(sorted(unknown))}")
        return self


@dataclass(frozen=True)
class Principal:
    """Who is calling: a tenant, and whether the key is an admin key."""

    tenant: str
    admin: bool


ANONYMOUS = Principal(tenant="", admin=True)
"""Every caller when authentication is off (a trusted, local setup)."""


def hash_key(key: str) -> str:
    """Hex SHA-256 of an API key, as stored in the keys file."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def generate_key() -> str:
    """A new random API key (256 bits, URL-safe)."""
    return _KEY_PREFIX + secrets.token_urlsafe(32)


def key_entry_toml(tenant: str, key_sha256: str, *, admin: bool = False) -> str:
    """The keys-file entry for one key."""
    try:
        entry = KeyEntry(tenant=tenant, key_sha256=key_sha256, admin=admin)
    except ValidationError as exc:
        raise ValueError("; ".join(error["msg"] for error in exc.errors())) from None
    lines = ["[[keys]]", f'tenant = "{entry.tenant}"', f'key_sha256 = "{entry.key_sha256}"']
    if admin:
        lines.append("admin = true")
    return "\n".join(lines) + "\n"


def load_keys_file(path: Path) -> KeysFile:
    """Read and validate a keys file; `KeysFileError` says what is wrong."""
    try:
        with path.open("rb") as file:
            data: dict[str, Any] = tomllib.load(file)
    except OSError as exc:
        raise KeysFileError(f"cannot read keys file {path}: {exc.strerror or exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise KeysFileError(f"keys file {path} is not valid TOML: {exc}") from exc
    try:
        return KeysFile.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in error['loc']) or 'file'}: {error['msg']}"
            for error in exc.errors()
        )
        raise KeysFileError(f"keys file {path} is invalid: {problems}") from exc


def parse_inline_keys(text: str) -> tuple[KeyEntry, ...]:
    """Entries of CDE_API_KEYS: "tenant:sha256[:admin]", comma-separated."""
    entries = []
    for number, item in enumerate(part.strip() for part in text.split(",")):
        if not item:
            continue
        fields = item.split(":")
        if len(fields) not in (2, 3) or (len(fields) == 3 and fields[2] != "admin"):
            raise KeysFileError(
                f'CDE_API_KEYS entry {number + 1} is not "tenant:sha256" or "tenant:sha256:admin"'
            )
        try:
            entries.append(KeyEntry(tenant=fields[0], key_sha256=fields[1], admin=len(fields) == 3))
        except ValidationError as exc:
            problems = "; ".join(error["msg"] for error in exc.errors())
            raise KeysFileError(f"CDE_API_KEYS entry {number + 1}: {problems}") from None
    return tuple(entries)


class Authenticator:
    """Checks `authorization: Bearer <key>` against the keys file (or lets all in when off)."""

    def __init__(self, keys: KeysFile | None, *, source: str = "") -> None:
        self.keys = keys
        self.source = source

    @classmethod
    def from_file(cls, path: Path | None, inline: str | None = None) -> Authenticator:
        """Authentication from the keys file `path` plus `inline` keys (CDE_API_KEYS); off
        when there are neither."""
        extra = parse_inline_keys(inline or "")
        sources = [str(path)] if path is not None else []
        if extra:
            sources.append("CDE_API_KEYS")
        if path is None and not extra:
            return cls(None)
        if path is not None:
            warn_if_shared(path, "the keys file")
        from_file = load_keys_file(path) if path is not None else None
        try:
            keys = KeysFile(
                keys=(from_file.keys if from_file else ()) + extra,
                tenants=from_file.tenants if from_file else {},
            )
        except ValidationError as exc:
            problems = "; ".join(error["msg"] for error in exc.errors())
            raise KeysFileError(f"CDE_API_KEYS ({' + '.join(sources)}): {problems}") from None
        return cls(keys, source=" + ".join(sources))

    @property
    def enabled(self) -> bool:
        """Whether callers must present a key."""
        return self.keys is not None

    def tenant_limits(self, tenant: str) -> TenantLimits | None:
        """The keys file's limits for `tenant`, if it sets any."""
        return None if self.keys is None else self.keys.tenants.get(tenant)

    def summary(self) -> str:
        """One line for the start-up banner, e.g. "auth: on, 3 keys, 2 tenants (keys.toml)"."""
        if self.keys is None:
            return "auth: off (no CDE_API_KEYS_FILE or CDE_API_KEYS)"
        tenants = {entry.tenant for entry in self.keys.keys}
        admins = sum(entry.admin for entry in self.keys.keys)
        return (
            f"auth: on, {len(self.keys.keys)} keys, {len(tenants)} tenants, {admins} admin "
            f"({self.source})"
        )

    def authenticate(self, metadata: Iterable[tuple[str, Any]] | None) -> Principal:
        """The caller's principal; `UnauthenticatedError` for a missing or unknown key."""
        if self.keys is None:
            return ANONYMOUS
        token = _bearer_token(metadata)
        digest = hash_key(token)
        found: KeyEntry | None = None
        for entry in self.keys.keys:  # every entry is compared: timing says nothing
            if hmac.compare_digest(digest, entry.key_sha256):
                found = entry
        if found is None:
            raise UnauthenticatedError("unknown API key")
        return Principal(tenant=found.tenant, admin=found.admin)


def _bearer_token(metadata: Iterable[tuple[str, Any]] | None) -> str:
    for key, value in metadata or ():
        if key.lower() != AUTHORIZATION_HEADER:
            continue
        text = value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
        if text[: len(_BEARER)].lower() == _BEARER and text[len(_BEARER) :].strip():
            return text[len(_BEARER) :].strip()
        raise UnauthenticatedError("malformed authorization header; send 'Bearer <API key>'")
    raise UnauthenticatedError("missing API key; send 'authorization: Bearer <API key>'")
