"""Secrets kept out of what a run records: command-line values, params, URLs, messages.

A run records its command line and params; users pass credentials there (``--token sk-...``,
``--api-key``, ``db.password=...``, ``https://user:pass@host/...``). Everything a run records
goes through this module first:

* a name *looks secret* (:func:`secret_name`) when one of its words (split on ``_``, ``-``,
  ``.`` and case changes) is ``password``, ``passwd``, ``pwd``, ``secret``, ``token``,
  ``credential(s)``, ``apikey``, ``auth`` or ``passphrase``, or two adjacent words are ``api
  key``, ``access key``, ``private key``, ``secret key``, ``client secret``, or the name is an
  environment-style ``UPPER_CASE_KEY``. Names of tokenizer tokens (``pad_token``,
  ``eos_token``, ``max_tokens``...) do not;
* on a command line, the value of such an option (``--token X``, ``--token=X``) and of such an
  assignment (``API_KEY=X``, Hydra's ``db.password=X``) becomes :data:`REDACTED`;
* in params, the value of such a key becomes :data:`REDACTED` (numbers and booleans are kept:
  ``max_token: 512`` is no secret);
* anywhere, the password of a URL (``scheme://user:password@host``) becomes :data:`REDACTED`,
  and so do the values of URL query parameters whose names look secret.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

__all__ = ["REDACTED", "redact_argv", "redact_text", "secret_name"]

REDACTED = "<redacted>"

_SECRET_WORDS = frozenset(
    {
        "password",
        "passwd",
        "pwd",
        "secret",
        "secrets",
        "token",
        "credential",
        "credentials",
        "apikey",
        "auth",
        "passphrase",
        "privatekey",
        "accesskey",
        "secretkey",
    }
)
_SECRET_PAIRS = frozenset(
    {("api", "key"), ("access", "key"), ("private", "key"), ("secret", "key"), ("client", "secret")}
)
_TOKENIZER_WORDS = frozenset(
    {"pad", "eos", "bos", "unk", "sep", "cls", "mask", "start", "end", "special", "max", "num"}
)
_WORD = re.compile(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|\d+")
_ENV_KEY = re.compile(r"^[A-Z][A-Z0-9]*(?:_[A-Z0-9]+)*_KEY$")
_URL_CREDENTIALS = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.\-]*://[^\s/@:]*:)(?P<pw>[^\s/@]+)@")
_URL_QUERY = re.compile(r"(?P<head>[?&](?P<name>[A-Za-z0-9_.\-]+)=)(?P<value>[^&#\s]+)")
_ASSIGNMENT = re.compile(r"^(?P<name>[+~]?[A-Za-z_][\w.\-]*)=(?P<value>.*)$", re.DOTALL)


def _words(name: str) -> list[str]:
    return [w.lower() for w in _WORD.findall(name)]


def secret_name(name: str) -> bool:
    """True if an option, param or variable name looks like it holds a credential."""
    bare = name.lstrip("-+~").rsplit(".", 1)[-1]
    if _ENV_KEY.match(bare):
        return True
    words = _words(bare)
    for i, word in enumerate(words):
        if word in ("token", "tokens") and i > 0 and words[i - 1] in _TOKENIZER_WORDS:
            continue
        if word == "tokens" or word.endswith("tokenizer"):
            continue
        if word in _SECRET_WORDS:
            return True
        if i > 0 and (words[i - 1], word) in _SECRET_PAIRS:
            return True
    return False


def redact_text(text: str) -> str:
    """``text`` with URL passwords and secret-looking URL query values replaced."""
    if "://" not in text and "=" not in text:
        return text
    out = _URL_CREDENTIALS.sub(lambda m: m.group("head") + REDACTED + "@", text)
    return _URL_QUERY.sub(
        lambda m: m.group("head") + REDACTED if secret_name(m.group("name")) else m.group(0), out
    )


def redact_argv(argv: Sequence[str]) -> list[str]:
    """A command line with the values of secret-looking options and assignments replaced.

    ``--token X`` and ``--token=X`` (any secret-looking option, see :func:`secret_name`),
    ``NAME=X`` with a secret-looking name, and URL credentials in any argument.
    """
    out: list[str] = []
    hide_next = False
    for i, arg in enumerate(argv):
        if hide_next:
            hide_next = False
            if not arg.startswith("--"):
                out.append(REDACTED)
                continue
        if i > 0 and arg.startswith("-") and len(arg) > 2:
            name, eq, _value = arg.partition("=")
            if secret_name(name):
                if eq:
                    out.append(f"{name}={REDACTED}")
                else:
                    out.append(arg)
                    hide_next = True
                continue
        m = _ASSIGNMENT.match(arg) if i > 0 else None
        if m is not None and secret_name(m.group("name")):
            out.append(f"{m.group('name')}={REDACTED}")
            continue
        out.append(redact_text(arg))
    return out
