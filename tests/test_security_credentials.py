"""Issue 9, "The service's own credentials": table-driven attacks against real servers (aiosmtpd,
MariaDB, the local Twilio stand-in) — the relay's sender and recipients, the service's Twilio
number, the one-statement mysql guard with its row limit, and URL secrets kept out of outputs."""

import time
from collections.abc import Callable
from typing import Any

import pymysql
import pytest

from errors import NodeConfigError, NodeExecutionError
from flows.engine import _log_json
from models import NodeDef
from tasks.context import Resources
from tasks.redaction import redact_url
from tasks.run_node import run_attempt
from tests import test_nodes_messaging as mail
from tests import test_nodes_mysql as mysql_tests
from tests.conftest import CallNode, MakeCtx, MakeResources
from tests.test_nodes_messaging import SID, SMTP_SECRET, SMTP_USER, TOKEN, StartSmtp, Twilio
from tests.test_nodes_mysql import cfg, count_items

# The real servers of the node tests, shared as fixtures
tls, smtp_server, real_resources = mail.tls, mail.smtp_server, mail.real_resources
twilio_server, twilio, database = mail.twilio_server, mail.twilio, mysql_tests.database

SERVICE_FROM = "Service <service@example.com>"
SERVICE_NUMBER = "+15550000000"


def _relay(port: int, **extra: Any) -> dict[str, Any]:
    return {
        "SMTP_HOST": "127.0.0.1",
        "SMTP_PORT": port,
        "SMTP_FROM": SERVICE_FROM,
        "SMTP_SECURITY": "none",
        **extra,
    }


# (case, node config, extra settings, expected From, expected Reply-To, envelope sender)
SENDERS = [
    ("emailFrom becomes Reply-To", {"emailFrom": "ceo@bank.example"}, {}, SERVICE_FROM,
     "ceo@bank.example", "service@example.com"),
    ("named emailFrom becomes Reply-To", {"emailFrom": "CEO <ceo@bank.example>"}, {},
     SERVICE_FROM, "CEO <ceo@bank.example>", "service@example.com"),
    ("explicit SMTP_HOST is still the relay",
     {"emailFrom": "ceo@bank.example", "emailSmtpHost": "127.0.0.1"}, {}, SERVICE_FROM,
     "ceo@bank.example", "service@example.com"),
    ("listed emailFrom is the sender", {"emailFrom": "Sales <sales@example.com>"},
     {"SMTP_ALLOWED_FROM": "ops@example.com, SALES@example.com"}, "Sales <sales@example.com>",
     None, "sales@example.com"),
    ("unlisted emailFrom with a list", {"emailFrom": "ops2@example.com"},
     {"SMTP_ALLOWED_FROM": "ops@example.com"}, SERVICE_FROM, "ops2@example.com",
     "service@example.com"),
    ("no emailFrom", {}, {}, SERVICE_FROM, None, "service@example.com"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("config", "settings", "sender", "reply_to", "mail_from"),
    [case[1:] for case in SENDERS],
    ids=[case[0] for case in SENDERS],
)
async def test_relay_mail_is_sent_from_smtp_from(
    call_node: CallNode,
    make_resources: MakeResources,
    smtp_server: StartSmtp,
    config: dict[str, Any],
    settings: dict[str, Any],
    sender: str,
    reply_to: str | None,
    mail_from: str,
) -> None:
    server = smtp_server("plain")
    resources = make_resources(**_relay(server.port, **settings))
    node = {"emailTo": "ops@example.com", "emailBody": "x", **config}
    await call_node("sendEmail", node, resources=resources)
    [got] = server.mailbox.received
    assert (got.message["From"], got.message["Reply-To"], got.mail_from) == (
        sender,
        reply_to,
        mail_from,
    )


async def test_a_node_own_server_keeps_its_emailfrom(
    call_node: CallNode, make_resources: MakeResources, smtp_server: StartSmtp
) -> None:
    server = smtp_server("plain")
    resources = make_resources(SMTP_HOST="smtp.internal.test", SMTP_FROM=SERVICE_FROM)
    config = {
        "emailTo": "ops@example.com",
        "emailSmtpHost": "127.0.0.1",
        "emailSmtpPort": str(server.port),
        "emailFrom": "me@mine.example",
    }
    await call_node("sendEmail", config, resources=resources)
    [got] = server.mailbox.received
    assert (got.message["From"], got.message["Reply-To"]) == ("me@mine.example", None)


# (recipients, EMAIL_MAX_RECIPIENTS or None for the default, refused)
RECIPIENTS = [(50, None, False), (51, None, True), (2, 2, False), (3, 2, True), (500, None, True)]


@pytest.mark.parametrize(("count", "limit", "refused"), RECIPIENTS)
async def test_recipient_limit(
    call_node: CallNode,
    make_resources: MakeResources,
    smtp_server: StartSmtp,
    count: int,
    limit: int | None,
    refused: bool,
) -> None:
    server = smtp_server("plain")
    extra = {"EMAIL_MAX_RECIPIENTS": limit} if limit else {}
    resources = make_resources(**_relay(server.port, **extra))
    to = "; ".join(f"user{i}@example.com" for i in range(count))
    config = {"emailTo": to, "emailBody": "x"}
    if not refused:
        await call_node("sendEmail", config, resources=resources)
        assert len(server.mailbox.received[0].rcpt_tos) == count
        return
    with pytest.raises(NodeConfigError, match="EMAIL_MAX_RECIPIENTS") as info:
        await call_node("sendEmail", config, resources=resources)
    assert f"at most {limit or 50}" in str(info.value)
    assert server.mailbox.received == []


# (settings, node config, error pattern): the service's password never travels in clear text
CLEAR_TEXT = [
    ({"SMTP_SECURITY": "none"}, {}, "SMTP_SECURITY is none while SMTP_PASSWORD is set"),
    ({"SMTP_SECURITY": "auto"}, {"emailSecurity": "none"}, "emailSecurity none is refused"),
    ({"SMTP_SECURITY": "auto"}, {}, "offers no TLS"),
]


@pytest.mark.parametrize(("settings", "config", "message"), CLEAR_TEXT)
async def test_service_password_never_sent_unencrypted(
    call_node: CallNode,
    make_resources: MakeResources,
    smtp_server: StartSmtp,
    settings: dict[str, Any],
    config: dict[str, Any],
    message: str,
) -> None:
    server = smtp_server("plain", auth=True)
    resources = make_resources(
        **_relay(server.port, SMTP_USER=SMTP_USER, SMTP_PASSWORD=SMTP_SECRET, **settings)
    )
    node = {"emailTo": "ops@example.com", "emailBody": "x", **config}
    with pytest.raises((NodeConfigError, NodeExecutionError), match=message) as info:
        await call_node("sendEmail", node, resources=resources)
    assert SMTP_SECRET not in str(info.value)
    assert server.mailbox.received == []


# (node config, refused): with the service's token, only TWILIO_FROM_NUMBER sends
SMS = [
    ({}, False),
    ({"twilioFromNumber": SERVICE_NUMBER}, False),
    ({"twilioFromNumber": "+15005550006"}, True),
    ({"twilioFromNumber": "+15005550006", "twilioAccountSid": SID}, True),
    ({"twilioFromNumber": "+15005550006", "twilioAuthToken": TOKEN}, False),
]


@pytest.mark.parametrize(("config", "refused"), SMS)
async def test_service_twilio_account_sends_from_its_number_only(
    call_node: CallNode,
    real_resources: Callable[..., Resources],
    twilio: Twilio,
    config: dict[str, Any],
    refused: bool,
) -> None:
    resources = real_resources(
        TWILIO_BASE_URL=twilio.url,
        TWILIO_ACCOUNT_SID=SID,
        TWILIO_AUTH_TOKEN=TOKEN,
        TWILIO_FROM_NUMBER=SERVICE_NUMBER,
    )
    node = {"smsTo": "+34600111222", "smsBody": "hi", **config}
    if refused:
        with pytest.raises(NodeConfigError, match="TWILIO_FROM_NUMBER only"):
            await call_node("sendSMS", node, resources=resources)
        assert twilio.server.requests == []
        return
    await call_node("sendSMS", node, resources=resources)
    expected = config.get("twilioFromNumber", SERVICE_NUMBER)
    assert [f["From"] for f in twilio.forms()] == [expected]


# Refused before anything is sent, with mysqlReadOnly on and off
GUARD_REFUSED = [
    "SELECT 1;",
    "SELECT 1 ;  ",
    "SELECT 1; DELETE FROM items",
    "SELECT 1 /* ; */",
    "SELECT 1 -- ;",
    "SELECT 1\x00",
    "SELECT\x0b1",
    "SELECT 1\x1a; DELETE FROM items",
    "SELECT 1 FROM items\x7f",
    "USE mysql",
    "use `mysql`",
]
GUARD_ALLOWED = [
    "SELECT 'a;b' AS v",
    "SELECT 'x\x01y' AS v",
    "SELECT\t1\r\nAS v",
    "SELECT `a;b` FROM (SELECT 1 AS `a;b`) t",
]


@pytest.mark.parametrize("read_only", [True, False])
@pytest.mark.parametrize("query", GUARD_REFUSED)
async def test_mysql_guard_refuses(
    call_node: CallNode, database: str, query: str, read_only: bool
) -> None:
    with pytest.raises(NodeConfigError, match="mysqlQuery"):
        await call_node("mysql", cfg(database, query, mysqlReadOnly=read_only))
    assert await count_items(database) == 3


@pytest.mark.parametrize("query", GUARD_ALLOWED)
async def test_mysql_guard_allows_separators_inside_literals(
    call_node: CallNode, database: str, query: str
) -> None:
    result = await call_node("mysql", cfg(database, query))
    assert result["rowCount"] == 1


async def test_mysql_connections_have_multi_statements_off(
    call_node: CallNode, make_resources: MakeResources, database: str
) -> None:
    resources = make_resources()
    await call_node("mysql", cfg(database, "SELECT 1 AS v"), resources=resources)
    [pool] = resources.mysql_pools.values()
    async with pool.acquire() as conn, conn.cursor() as cur:
        with pytest.raises(pymysql.err.ProgrammingError, match="1064"):
            await cur.execute("SELECT 1; DELETE FROM items")
    assert await count_items(database) == 3


# (statement leaving session state, read_only, query that would see it, value seen next time)
SESSION_STATE = [
    ("SET @leak := 42", False, "SELECT @leak AS v", None),
    ("SELECT @leak := 42 AS v", True, "SELECT @leak AS v", None),
    ("SET SESSION sql_mode = 'ANSI_QUOTES'", False, "SELECT @@SESSION.sql_mode LIKE "
     "'%ANSI_QUOTES%' AS v", 0),
    ("CREATE TEMPORARY TABLE leak (x INT)", False, "SELECT COUNT(*) AS v FROM "
     "information_schema.tables WHERE table_name = 'leak'", 0),
    ("SELECT GET_LOCK('wos_leak', 0) AS v", True, "SELECT IS_USED_LOCK('wos_leak') IS NOT NULL "
     "AS v", 0),
]  # fmt: skip


@pytest.mark.parametrize(("first", "read_only", "probe", "seen"), SESSION_STATE)
async def test_mysql_pooled_connections_carry_no_session_state(
    call_node: CallNode,
    make_resources: MakeResources,
    database: str,
    first: str,
    read_only: bool,
    probe: str,
    seen: Any,
) -> None:
    resources = make_resources()
    await call_node("mysql", cfg(database, first, mysqlReadOnly=read_only), resources=resources)
    result = await call_node("mysql", cfg(database, probe), resources=resources)
    assert result["outputData"] == [{"v": seen}]
    [pool] = resources.mysql_pools.values()
    assert pool.size == 1  # the same connection served both executions


# (MYSQL_MAX_ROWS, query, refused)
ROW_LIMIT = [
    (3, "SELECT * FROM items", False),
    (2, "SELECT * FROM items", True),
    (1000, "SELECT seq FROM seq_1_to_50000000", True),
]


@pytest.mark.parametrize(("limit", "query", "refused"), ROW_LIMIT)
async def test_mysql_row_limit(
    call_node: CallNode,
    make_resources: MakeResources,
    database: str,
    limit: int,
    query: str,
    refused: bool,
) -> None:
    resources = make_resources(MYSQL_MAX_ROWS=limit)
    if not refused:
        result = await call_node("mysql", cfg(database, query), resources=resources)
        assert result["rowCount"] == limit
        return
    started = time.monotonic()
    with pytest.raises(NodeExecutionError, match=f"more than {limit:,} rows \\(MYSQL_MAX_ROWS\\)"):
        await call_node("mysql", cfg(database, query), resources=resources)
    assert time.monotonic() - started < 5  # stopped at the limit, not after 50 M rows
    result = await call_node("mysql", cfg(database, "SELECT 1 AS v"), resources=resources)
    assert result["outputData"] == [{"v": 1}]  # the pool recovered (the connection was dropped)


def test_mysql_default_row_limit() -> None:
    from tests.conftest import make_settings

    assert make_settings().MYSQL_MAX_ROWS == 100_000
    assert make_settings().EMAIL_MAX_RECIPIENTS == 50


# (text, redacted)
URLS = [
    ("https://bob:hunter2@api.example.com/x", "https://***@api.example.com/x"),
    ("mysql://root:pw@db:3306/app failed", "mysql://***@db:3306/app failed"),
    ("GET http://a.example/?key=K1&x=1", "GET http://a.example/?key=***&x=1"),
    ("http://a/?API_KEY=K&ApiKey=K&token=T", "http://a/?API_KEY=***&ApiKey=***&token=***"),
    ("http://a/p?access_token=T#frag", "http://a/p?access_token=***#frag"),
    ("http://a/?secret=S&password=P&pwd=W", "http://a/?secret=***&password=***&pwd=***"),
    ("http://a/?sig=S&Signature=S2&page=2", "http://a/?sig=***&Signature=***&page=2"),
    ('{"url": "http://u:p@h/?token=abc", "n": 1}', '{"url": "http://***@h/?token=***", "n": 1}'),
    ("http://a/?monkey=1&tokens=2", "http://a/?monkey=1&tokens=2"),
    ("no url here: key=value", "no url here: key=value"),
]


@pytest.mark.parametrize(("text", "redacted"), URLS)
def test_redact_url(text: str, redacted: str) -> None:
    assert redact_url(text) == redacted


def test_redact_url_is_linear() -> None:
    hostile = "a" * 200_000 + "://" * 100_000 + "?key=" * 100_000 + "http://" + "x" * 200_000
    started = time.monotonic()
    redact_url(hostile)
    assert time.monotonic() - started < 1


def test_stored_log_payloads_are_redacted() -> None:
    data = [{"url": "https://u:secret-pw@h.example/?apikey=SECRET1"}]
    stored = _log_json(data) or ""
    assert "secret-pw" not in stored and "SECRET1" not in stored
    big = {"outputData": [{"u": "http://x/?token=SECRET2", "pad": "p" * 300_000}] * 2}
    assert "SECRET2" not in (_log_json(big) or "")


async def test_node_errors_are_redacted(make_ctx: MakeCtx, database: str) -> None:
    """A handler error quoting a URL with credentials (MariaDB quotes the text near a syntax
    error) is stored without them."""
    query = "SELECT FROM 'https://u:pw-123@h/?token=tok-456'"
    node = NodeDef(id="n1", type="mysql", config=cfg(database, query))
    with pytest.raises(NodeExecutionError, match="1064") as info:
        await run_attempt(node, None, make_ctx("mysql"))
    assert "pw-123" not in str(info.value) and "tok-456" not in str(info.value)
    assert "https://***@h/?token=***" in str(info.value)
