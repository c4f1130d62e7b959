"""Secrets kept out of the texts nodes write (error messages, logs): one rule for every node."""

import re

MASK = "***"


def redact(text: str, *secrets: str | None) -> str:
    """`text` with every occurrence of each non-empty secret replaced by `***`, whatever the
    secret's length. One pass, longest secret first, so a secret that contains another (or a
    secret made of `*`) is never half-replaced."""
    found = sorted({s for s in secrets if s}, key=len, reverse=True)
    if not found:
        return text
    return re.sub("|".join(map(re.escape, found)), MASK, text)
