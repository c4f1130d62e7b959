"""Secrets kept out of the texts nodes write (error messages, logs): one rule for every node."""

import logging
import re
from typing import Any

MASK = "***"
SECRET_PARAMS = (
    "key",
    "api_key",
    "api-key",
    "apikey",
    "token",
    "access_token",
    "auth_token",
    "refresh_token",
    "client_secret",
    "secret",
    "password",
    "passwd",
    "pwd",
    "sig",
    "signature",
)
# Both anchored on a literal (`://`, or one of `?&;` then a fixed name) and followed by one
# character class that stops at the URL's delimiters and at JSON/HTML quotes: linear time.
_USERINFO = re.compile(r"://[^\s/?#@\"'<>\\]*@")
_SECRET_PARAM = re.compile(
    r"([?&;](?:" + "|".join(map(re.escape, SECRET_PARAMS)) + r")=)[^&#;\s\"'<>\\]*",
    re.IGNORECASE,
)


def redact_url(text: str) -> str:
    """`text` with the user-info of every URL in it (`scheme://user:pass@`) and the values of
    secret-looking query parameters (SECRET_PARAMS, any case) replaced by `***`."""
    if "://" in text:
        text = _USERINFO.sub(f"://{MASK}@", text)
    return _SECRET_PARAM.sub(rf"\g<1>{MASK}", text) if "=" in text else text


def redact(text: str, *secrets: str | None) -> str:
    """`text` with every occurrence of each non-empty secret replaced by `***`, whatever the
    secret's length. One pass, longest secret first, so a secret that contains another (or a
    secret made of `*`) is never half-replaced."""
    found = sorted({s for s in secrets if s}, key=len, reverse=True)
    if not found:
        return text
    return re.sub("|".join(map(re.escape, found)), MASK, text)


_TRACEBACKS = logging.Formatter()


class _RedactingRecordFactory:
    """Wraps the process's LogRecord factory: `redact_url` on each record's message and on its
    formatted traceback (`exc_text`, which every `logging.Formatter` prints as it is)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def __call__(self, *args: Any, **kwargs: Any) -> logging.LogRecord:
        record: logging.LogRecord = self.inner(*args, **kwargs)
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a malformed record is logging's own error to report
            return record
        redacted = redact_url(message)
        if redacted != message:
            record.msg, record.args = redacted, ()
        if record.exc_info and record.exc_info[1] is not None and not record.exc_text:
            record.exc_text = redact_url(_TRACEBACKS.formatException(record.exc_info))
        return record


def install_log_redaction() -> None:
    """Every log record of this process — ours, Prefect's task/flow run failures (console and the
    Prefect API's log handler), libraries' — leaves with URL secrets redacted, message and
    traceback (chained causes included). Records are only built for enabled levels, so this costs
    nothing for filtered-out debug lines. Idempotent."""
    current = logging.getLogRecordFactory()
    if not isinstance(current, _RedactingRecordFactory):
        logging.setLogRecordFactory(_RedactingRecordFactory(current))
