"""Credentials never reach a log: the `user:password@` of a URI, redacted (a config concern: configs name URIs).

Example:
    >>> redact_uri("postgresql://u:p@h/db"), redact_uri("sqlite:///mlruns/mlflow.db")
    ('postgresql://***@h/db', 'sqlite:///mlruns/mlflow.db')
"""

from __future__ import annotations

import re

REDACTED = "***"
_URI_USERINFO = re.compile(r"(\b[A-Za-z][A-Za-z0-9+.\-]*://)[^/\s?#'\"]*@")


def redact_uri(text: str) -> str:
    """`text` with the `user:password@` of every URI in it replaced by `***@`, fit to print or log."""
    return _URI_USERINFO.sub(lambda m: m.group(1) + REDACTED + "@", text)
