"""Secrets never leave the process: the one redaction used by every record, error and log line.

What is a secret here (docs/security.md, threat 3):

- values of `io.storage_options` under secret-looking names (`key`, `secret`, `token`, `password`,
  `Authorization`, ...), at any depth (`client_kwargs.aws_secret_access_key`);
- the user:password part and the query string of a URL (presigned URLs carry their signature and
  credential there); scheme, host and path stay, so the source remains identifiable;
- the value of any `io.storage_options...=` setting on a command line (`_lock.json`'s `command`);
- any value registered by `register_secrets` (every storage_options secret the process was given,
  and the passwords and query values of URLs it redacted), wherever it shows up later: in an
  exception message of a storage library, say.

`redact_options` is for configs written out (dataset.json); `redact_url` for recorded URLs
(manifest `source_shard`, `_done` `source`); `redact_text` for free text (errors, log lines, the
lock's command line). `install_log_redaction` makes every log record of the process pass through
`redact_text`.
"""
from __future__ import annotations

import functools
import logging
import re
import threading
import urllib.parse
from typing import Any, Mapping

REDACTED = "***"
# A storage option (or header) whose value is a credential, by its name.
_SECRET_OPTION = re.compile(
    r"(^|[_.-])(key|sig|sas)($|[_.-])|secret|token|passw|pwd|credential|auth|signature|cookie|session|"
    r"private|connection[_-]?string|access[_-]?key", re.IGNORECASE)
# Options that hold no credential: shown as they are (URLs among them still lose user:password).
_SAFE_OPTIONS = frozenset({"endpoint_url", "region_name", "region", "anon", "use_ssl", "requester_pays",
                           "default_block_size", "default_fill_cache", "version_aware", "cache_regions",
                           "project", "client_kwargs", "config_kwargs", "s3_additional_kwargs", "headers"})
# Settings shown on a command line as they are: plain values that are no credential.
_SAFE_SCALARS = frozenset({"endpoint_url", "region_name", "region", "anon", "use_ssl", "requester_pays",
                           "version_aware", "project"})
_URL = re.compile(r"\b[a-zA-Z][a-zA-Z0-9+.-]*://[^\s'\"<>()\[\]{},]+")
_URL_START = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")
# `io.storage_options...=VALUE` in a command line or message: VALUE runs to the next ` --option`.
_OPTION_SETTING = re.compile(r"(io\.storage_options((?:\.[\w-]+)*)\s*=\s*)(.*?)(?=\s--|$)", re.DOTALL)
_MIN_REGISTERED = 6  # shorter values are too likely to be ordinary words or numbers
_registered: set[str] = set()
_lock = threading.Lock()


def is_secret_option(name: str) -> bool:
    """Whether a storage option (or header) named `name` holds a credential."""
    return name not in _SAFE_OPTIONS and bool(_SECRET_OPTION.search(name))


def redact_options(options: Any, name: str = "") -> Any:
    """A copy of `options` (io.storage_options) fit to be written, at any depth. An allowlist: a
    string is kept only under a name known to hold no credential (`endpoint_url`, `region_name`,
    ...; its URL still loses user:password and query); any other string, and anything under a
    secret-looking name, is REDACTED, so an unexpected option (`{foo: S3CR3T}`) is never written.
    Booleans and numbers stay (`anon: false`, timeouts)."""
    if isinstance(options, Mapping):
        return {k: REDACTED if is_secret_option(str(k)) and v not in (None, "") else redact_options(v, str(k))
                for k, v in options.items()}
    if isinstance(options, (list, tuple)):
        return [redact_options(v, name) for v in options]
    if isinstance(options, str):
        return redact_text(options) if name in _SAFE_SCALARS else REDACTED
    return options


def redact_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """A config document (`Config.to_dict()`) fit to be written: `io.storage_options` through
    `redact_options`, every other string through `redact_text` (a URL in `model.pretrained`)."""
    out = redact_strings(dict(config))
    io = out.get("io")
    if isinstance(io, dict) and "storage_options" in io:
        io["storage_options"] = redact_options(io["storage_options"])
    return out


def redact_strings(value: Any) -> Any:
    """A copy of a JSON-like document with every string through `redact_text`."""
    if isinstance(value, Mapping):
        return {k: redact_strings(v) for k, v in value.items()}
    if isinstance(value, list):
        return [redact_strings(v) for v in value]
    if isinstance(value, str):
        return redact_text(value)
    return value


@functools.lru_cache(maxsize=4096)
def redact_url(url: str) -> str:
    """`scheme://host[:port]/path` of `url`: user:password, query and fragment dropped (what a
    record keeps: the source stays identifiable). Anything that is not a URL with a scheme (a
    local path, `pipe:CMD`) goes through `redact_text`. Cached: a shard's rows share one URL."""
    if not _URL_START.match(url):
        return redact_text(url)  # a path, or text with URLs inside (`pipe:curl https://...`)
    return _reduce_url(url, marked=False)


def _reduce_url(url: str, marked: bool) -> str:
    """`url` without credentials and query; `marked`: `***@` and `?***` say where they were (text)."""
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        return REDACTED
    _learn(parts)
    host = parts.netloc.rsplit("@", 1)[-1]
    if marked and "@" in parts.netloc:
        host = f"{REDACTED}@{host}"
    query = REDACTED if marked and parts.query else ""
    return _replace_registered(urllib.parse.urlunsplit((parts.scheme, host, parts.path, query, "")))


def _learn(parts: urllib.parse.SplitResult) -> None:
    """Remember what a URL carried besides its location, to catch it again in free text."""
    values = []
    if "@" in parts.netloc:
        userinfo = parts.netloc.rsplit("@", 1)[0]
        values.append(urllib.parse.unquote(userinfo.partition(":")[2]))
    for name, value in urllib.parse.parse_qsl(parts.query, keep_blank_values=False):
        if is_secret_option(name):  # X-Amz-Signature, X-Amz-Credential, sig, token, ...
            values += [value, urllib.parse.quote(value, safe="")]
    _register(values)


def redact_text(text: str) -> str:
    """`text` with every URL reduced by `redact_url`, every `io.storage_options...=VALUE` setting's
    credential replaced (the value runs to the next ` --`), and every registered secret replaced."""
    if not text:
        return text
    if "io.storage_options" in text:
        text = _OPTION_SETTING.sub(_redact_setting, text)
    if "://" in text:
        text = _URL.sub(lambda m: _reduce_url(m.group(0), marked=True), text)
    return _replace_registered(text)


def _redact_setting(match: re.Match[str]) -> str:
    path = [p for p in match.group(2).split(".") if p]
    value = match.group(3)
    if path and not any(is_secret_option(p) for p in path) and path[-1] in _SAFE_SCALARS:
        return match.group(1) + _URL.sub(lambda m: _reduce_url(m.group(0), marked=True), value)
    return match.group(1) + REDACTED


def _replace_registered(text: str) -> str:
    if not _registered:
        return text
    with _lock:
        secrets = sorted(_registered, key=len, reverse=True)  # a longer secret first: no partial leftovers
    for secret in secrets:
        if secret in text:
            text = text.replace(secret, REDACTED)
    return text


def register_secrets(options: Any) -> None:
    """Remember the credential values of `options` (io.storage_options, any depth), so that they
    are redacted wherever they appear later in this process (an exception message, a log line)."""
    values: list[str] = []
    _collect(options, values, secret=False)
    _register(values)


def _collect(value: Any, into: list[str], secret: bool) -> None:
    if isinstance(value, Mapping):
        for k, v in value.items():
            _collect(v, into, secret or is_secret_option(str(k)))
    elif isinstance(value, (list, tuple)):
        for v in value:
            _collect(v, into, secret)
    elif isinstance(value, str):
        if secret:
            into.append(value)
        elif "://" in value:
            redact_url(value)  # learns a user:password or signature inside an endpoint URL


def _register(values: list[str]) -> None:
    fresh = {v for v in values if isinstance(v, str) and len(v) >= _MIN_REGISTERED}
    if fresh - _registered:
        with _lock:
            _registered.update(fresh)
        redact_url.cache_clear()  # cached results may hold a value that is a secret now


# Text written by a program we do not know (a `pipe:` command's stderr) may hold a secret in any
# shape: besides URLs, `key=value` / `key: value` for secret-looking keys, `Bearer ...`, and long
# token-like runs are replaced too.
_USERINFO = re.compile(r"(?<=://)[^/@\s]+@")
_QUERY = re.compile(r"(?<=[^\s?])\?[^\s]*")
_SECRET_PAIR = re.compile(r"(?i)\b(\w*(?:key|secret|token|passw\w*|signature|credential|auth\w*)\w*)(\s*[=:]\s*)\S+")
_BEARER = re.compile(r"(?i)\b(bearer|basic)\s+\S+")
_TOKEN = re.compile(r"[A-Za-z0-9+/_=-]{32,}")


def redact_foreign(text: str, limit: int) -> str:
    """`text` of unknown origin (a command's stderr) with URL credentials, query strings,
    secret-looking values, long tokens and registered secrets replaced by `***`, control
    characters dropped, cut to `limit` characters."""
    text = "".join(c if c.isprintable() else " " for c in text)
    text = _USERINFO.sub("***@", text)
    text = _QUERY.sub("?***", text)
    text = _BEARER.sub(lambda m: f"{m.group(1)} ***", text)
    text = _SECRET_PAIR.sub(lambda m: f"{m.group(1)}{m.group(2)}***", text)
    text = _TOKEN.sub("***", text)
    text = _replace_registered(text)
    return text if len(text) <= limit else text[: limit - 3] + "..."


class _RedactingFactory:
    """A log record factory whose records carry redacted text (message and traceback): it sees
    every record of every logger that is emitted, whatever handler prints it."""

    def __init__(self, inner: Any):
        self.inner = inner

    def __call__(self, *args: Any, **kwargs: Any) -> logging.LogRecord:
        record = self.inner(*args, **kwargs)
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a bad format string is the handler's to report
            return record
        clean = redact_text(message)
        if clean != message:
            record.msg, record.args = clean, None
        if record.exc_info and not record.exc_text:
            record.exc_text = redact_text(logging.Formatter().formatException(record.exc_info))
        return record


def install_log_redaction() -> None:
    """Redact every log record of this process from now on (idempotent)."""
    current = logging.getLogRecordFactory()
    if not isinstance(current, _RedactingFactory):
        logging.setLogRecordFactory(_RedactingFactory(current))
