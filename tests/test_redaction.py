"""tasks.redaction: one rule for secrets in node texts, whatever their length."""

import pytest

from tasks.redaction import redact


@pytest.mark.parametrize("secret", ["~", "~^", "~^!", "a-long-secret"])
def test_redact_any_length(secret: str) -> None:
    assert redact(f"key {secret} refused ({secret})", secret) == "key *** refused (***)"


def test_redact_without_secrets_keeps_the_text() -> None:
    assert redact("nothing to hide", None, "") == "nothing to hide"


def test_redact_longest_secret_first_in_one_pass() -> None:
    assert redact("token abc and ab", "ab", "abc") == "token *** and ***"
    assert redact("pw * and **", "*") == "pw *** and ******"
