"""Keeping secrets out of what raysearch prints, logs and writes: credentials inside URIs
(`https://user:password@host`) and values whose key names a secret. Imports nothing heavy,
so every command can use it before anything starts."""
from __future__ import annotations

import re

_CREDENTIALS = re.compile(r"(?P<scheme>[a-zA-Z][\w+.-]*://)[^/@\s]+@")
_SECRET_KEY = re.compile(r"password|passwd|token|secret|api_key|credential", re.IGNORECASE)
MASK = "***"


def redact(value: str) -> str:
    """Drop user:password from any URI in `value` (e.g. a MLflow or database URI)."""
    return _CREDENTIALS.sub(lambda m: m.group("scheme") + MASK + "@", value)


def is_redacted(value: object) -> bool:
    """Whether `value` (e.g. a saved MLflow URI) had its credentials masked by `redact`."""
    return MASK in str(value)


def names_a_secret(key: str) -> bool:
    """Whether a (flattened) parameter name looks like it holds a secret."""
    return bool(_SECRET_KEY.search(key))


def loggable(key: str, value: object) -> str:
    """`value` as text safe to log under `key`: masked for a secret's name, URIs redacted."""
    return MASK if names_a_secret(key) else redact(str(value))
