"""sendEmail against a real SMTP server on loopback (aiosmtpd: plain, STARTTLS, implicit TLS,
AUTH) and sendSMS against a local HTTP server speaking Twilio's Messages API (contract §4.16–17)."""

import base64
import datetime as dt
import email
import ipaddress
import logging
import urllib.parse
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.policy import default as default_policy
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from errors import NodeConfigError, NodeExecutionError
from models import NodeDef
from tasks import get_spec
from tasks.context import Resources
from tasks.run_node import run_with_retries
from tests.conftest import CallNode, MakeCtx, make_settings
from tests.e2e import MockServer, free_port

SMTP_USER, SMTP_SECRET = "mailer", "Smtp-Secret-4242"
SID, TOKEN = "AC" + "0123456789abcdef" * 2, "Twilio-Token-9f8e7d6c"
FROM_NUMBER = "+15005550006"


@dataclass
class Tls:
    ca: Path
    cert: Path
    key: Path

    def server_context(self) -> Any:
        import ssl

        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.cert, self.key)
        return context


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> Tls:
    """A throwaway CA and a server certificate for localhost / 127.0.0.1 signed by it."""
    folder = tmp_path_factory.mktemp("tls")
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "wos test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False),
            critical=True,
        )
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    paths = Tls(folder / "ca.pem", folder / "cert.pem", folder / "key.pem")
    paths.ca.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths.key.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return paths


@dataclass
class Received:
    mail_from: str
    rcpt_tos: list[str]
    message: EmailMessage
    tls: bool
    login: str | None


@dataclass
class Mailbox:
    """aiosmtpd handler: records every message; `refuse` maps recipients to RCPT replies and
    `data_replies` are answered (in order) to DATA before accepting."""

    received: list[Received] = field(default_factory=list)
    refuse: dict[str, str] = field(default_factory=dict)
    data_replies: list[str] = field(default_factory=list)

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, rcpt_options: list[str]
    ) -> str:
        if address in self.refuse:
            return self.refuse[address]
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        if self.data_replies:
            return self.data_replies.pop(0)
        message = email.message_from_bytes(envelope.original_content, policy=default_policy)
        login = session.auth_data.login.decode() if session.authenticated else None
        tls = server.transport.get_extra_info("sslcontext") is not None
        self.received.append(
            Received(envelope.mail_from, list(envelope.rcpt_tos), message, tls, login)
        )  # type: ignore[arg-type]
        return "250 Message accepted for delivery"


def _authenticator(
    server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any
) -> AuthResult:
    ok = (
        isinstance(auth_data, LoginPassword)
        and auth_data.login == SMTP_USER.encode()
        and auth_data.password == SMTP_SECRET.encode()
    )
    return AuthResult(success=ok, handled=False, auth_data=auth_data)


def _echoing_authenticator(
    server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any
) -> AuthResult:
    """Refuses every login with a reply that quotes the password back."""
    password = auth_data.password.decode() if isinstance(auth_data, LoginPassword) else "?"
    return AuthResult(success=False, handled=False, message=f"535 Bad password: {password}")


@dataclass
class SmtpServer:
    port: int
    mailbox: Mailbox


StartSmtp = Callable[..., SmtpServer]


@pytest.fixture
def smtp_server(tls: Tls) -> Iterator[StartSmtp]:
    """`smtp_server(mode="plain"|"starttls"|"ssl", auth=False)`: a real aiosmtpd server on a
    free loopback port, stopped after the test. With auth, AUTH is offered even without TLS
    (`authenticator` decides the logins)."""
    started: list[Controller] = []

    def start(
        mode: str = "plain", auth: bool = False, authenticator: Any = _authenticator
    ) -> SmtpServer:
        mailbox = Mailbox()
        options: dict[str, Any] = {}
        if mode == "starttls":
            options["tls_context"] = tls.server_context()
        if mode == "ssl":
            options["ssl_context"] = tls.server_context()
        if auth:
            options.update(authenticator=authenticator, auth_require_tls=False)
        controller = Controller(
            mailbox, hostname="127.0.0.1", port=free_port(), server_hostname="localhost", **options
        )
        controller.start()
        started.append(controller)
        return SmtpServer(controller.port, mailbox)

    yield start
    for controller in started:
        controller.stop()


@pytest.fixture
async def real_resources() -> AsyncIterator[Callable[..., Resources]]:
    """Resources whose HTTP client talks to real sockets (for the local Twilio server)."""
    opened: list[Resources] = []

    def make(**settings: Any) -> Resources:
        resources = Resources(make_settings(**settings), httpx.AsyncClient())
        opened.append(resources)
        return resources

    yield make
    for resources in opened:
        await resources.aclose()


def email_config(server: SmtpServer, **extra: Any) -> dict[str, Any]:
    return {
        "emailTo": "ops@example.com",
        "emailSubject": "Alert",
        "emailBody": "Hello",
        "emailSmtpHost": "127.0.0.1",
        "emailSmtpPort": str(server.port),
        "emailFrom": "robot@example.com",
        **extra,
    }


def parts(message: EmailMessage) -> tuple[str, str]:
    plain = message.get_body(preferencelist=("plain",))
    rich = message.get_body(preferencelist=("html",))
    assert plain is not None and rich is not None
    return (plain.get_content().replace("\r\n", "\n"), rich.get_content().replace("\r\n", "\n"))


async def test_email_plain_smtp_sends_text_and_html_parts(
    call_node: CallNode, smtp_server: StartSmtp
) -> None:
    server = smtp_server("plain")
    data = [{"id": 1}, {"id": 2}]
    body = "Line 1\nTemp <b>hot</b> & rising\r\nLine 3"
    result = await call_node(
        "sendEmail", email_config(server, emailSecurity="none", emailBody=body), data
    )
    assert result["success"] is True
    assert result["outputData"] == data
    assert result["message"] == "Email sent to ops@example.com"
    [got] = server.mailbox.received
    assert (got.mail_from, got.rcpt_tos, got.tls, got.login) == (
        "robot@example.com",
        ["ops@example.com"],
        False,
        None,
    )
    message = got.message
    assert message["Subject"] == "Alert"
    assert message["From"] == "robot@example.com"
    assert message["To"] == "ops@example.com"
    assert message["Message-ID"] == result["messageId"]
    assert message["Date"]
    assert message.get_content_type() == "multipart/alternative"
    plain, rich = parts(message)
    assert plain == "Line 1\nTemp <b>hot</b> & rising\nLine 3\n"
    assert "Line 1<br>\nTemp &lt;b&gt;hot&lt;/b&gt; &amp; rising<br>\nLine 3" in rich
    assert rich.startswith("<html><body>")


@pytest.mark.parametrize(
    ("data", "config", "to", "subject", "body"),
    [
        (
            [
                {"name": "Ana", "email": "ana@example.com", "temp": 85.0},
                {"name": "Bob", "email": "bob@example.com", "temp": 20},
            ],
            {"emailTo": "{email}", "emailSubject": "Hi {{name}}", "emailBody": "Temp {temp}°"},
            ["ana@example.com"],
            "Hi Ana",
            "Temp 85°",
        ),
        (
            {"name": "Cy", "email": "cy@example.com", "ok": True, "tags": ["a", 1]},
            {
                "emailTo": "{{email}}",
                "emailSubject": "{ name } ok={ok}",
                "emailBody": 'tags={{tags}} missing={nope} {{nope}} json={"a": 1}',
            },
            ["cy@example.com"],
            "Cy ok=true",
            'tags=["a",1] missing={nope} {{nope}} json={"a": 1}',
        ),
        (
            [{"Customer Name": "Dee", "v": None}],
            {
                "emailTo": "x@example.com, y@example.com; Z Person <z@example.com>",
                "emailSubject": "{Customer Name}",
                "emailBody": "{v}",
            },
            ["x@example.com", "y@example.com", "z@example.com"],
            "Dee",
            "null",
        ),
        (
            [],
            {"emailTo": "a@example.com", "emailSubject": "{x}", "emailBody": "{x}"},
            ["a@example.com"],
            "{x}",
            "{x}",
        ),
        (
            "plain text input",
            {"emailTo": "a@example.com", "emailBody": "{{x}}"},
            ["a@example.com"],
            "(No subject)",
            "{{x}}",
        ),
        (
            None,
            {"emailTo": "a@example.com", "emailSubject": "two\nlines\r\n here"},
            ["a@example.com"],
            "two lines here",
            "",
        ),
    ],
)
async def test_email_templates_from_the_first_record(
    call_node: CallNode,
    smtp_server: StartSmtp,
    data: Any,
    config: dict[str, Any],
    to: list[str],
    subject: str,
    body: str,
) -> None:
    server = smtp_server("plain")
    base = email_config(server, emailSecurity="none")
    base.pop("emailSubject")
    base.pop("emailBody")
    result = await call_node("sendEmail", {**base, **config}, data)
    [got] = server.mailbox.received
    assert got.rcpt_tos == to
    assert got.message["Subject"] == subject
    assert parts(got.message)[0] == body + "\n"
    assert result["message"] == "Email sent to " + ", ".join(to)
    assert result["outputData"] == data


@pytest.mark.parametrize("security", ["starttls", None])
async def test_email_starttls_with_auth(
    call_node: CallNode, make_resources: Any, smtp_server: StartSmtp, tls: Tls, security: str | None
) -> None:
    """Explicit STARTTLS, and `auto` on a non-standard port (STARTTLS because it is offered)."""
    server = smtp_server("starttls", auth=True)
    config = email_config(
        server, emailSmtpUser=SMTP_USER, emailSmtpPass=SMTP_SECRET, emailSecurity=security
    )
    await call_node(
        "sendEmail", config, {"a": 1}, resources=make_resources(SMTP_CA_FILE=str(tls.ca))
    )
    [got] = server.mailbox.received
    assert (got.tls, got.login) == (True, SMTP_USER)


async def test_email_implicit_tls(
    call_node: CallNode, make_resources: Any, smtp_server: StartSmtp, tls: Tls
) -> None:
    server = smtp_server("ssl", auth=True)
    config = email_config(
        server,
        emailSmtpUser=SMTP_USER,
        emailSmtpPass=SMTP_SECRET,
        emailSecurity="ssl",
        emailSmtpHost="localhost",
    )
    await call_node("sendEmail", config, None, resources=make_resources(SMTP_CA_FILE=str(tls.ca)))
    [got] = server.mailbox.received
    assert (got.tls, got.login) == (True, SMTP_USER)


@pytest.mark.parametrize(("mode", "security"), [("starttls", "starttls"), ("ssl", "ssl")])
async def test_email_untrusted_certificate_is_refused(
    call_node: CallNode, smtp_server: StartSmtp, mode: str, security: str
) -> None:
    server = smtp_server(mode)
    with pytest.raises(
        NodeExecutionError, match="Failed to send email: TLS failed: .*CERTIFICATE"
    ) as info:
        await call_node("sendEmail", email_config(server, emailSecurity=security))
    assert info.value.retryable is False
    assert server.mailbox.received == []


async def test_email_starttls_required_but_not_offered(
    call_node: CallNode, smtp_server: StartSmtp
) -> None:
    server = smtp_server("plain")
    with pytest.raises(NodeExecutionError, match="STARTTLS extension not supported") as info:
        await call_node("sendEmail", email_config(server, emailSecurity="starttls"))
    assert info.value.retryable is False


async def test_email_password_never_sent_in_clear_text_unless_security_none(
    call_node: CallNode, smtp_server: StartSmtp
) -> None:
    server = smtp_server("plain", auth=True)
    creds = {"emailSmtpUser": SMTP_USER, "emailSmtpPass": SMTP_SECRET}
    with pytest.raises(NodeExecutionError, match="offers no TLS") as info:
        await call_node("sendEmail", email_config(server, **creds))
    assert SMTP_SECRET not in str(info.value)
    assert server.mailbox.received == []
    await call_node("sendEmail", email_config(server, emailSecurity="none", **creds))
    [got] = server.mailbox.received
    assert (got.tls, got.login) == (False, SMTP_USER)


async def test_email_wrong_password_is_not_retried_and_not_shown(
    call_node: CallNode, smtp_server: StartSmtp, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    server = smtp_server("plain", auth=True)
    wrong = "Wrong-Password-1234"
    with pytest.raises(NodeExecutionError, match=r"SMTP authentication failed \(535") as info:
        await call_node(
            "sendEmail",
            email_config(
                server, emailSecurity="none", emailSmtpUser=SMTP_USER, emailSmtpPass=wrong
            ),
        )
    assert info.value.retryable is False
    assert wrong not in str(info.value)
    assert wrong not in caplog.text
    assert base64.b64encode(wrong.encode()).decode() not in caplog.text
    assert server.mailbox.received == []


@pytest.mark.parametrize("password", ["~", "~^", "~^!"])
async def test_email_short_password_is_redacted_from_the_error(
    call_node: CallNode, smtp_server: StartSmtp, caplog: pytest.LogCaptureFixture, password: str
) -> None:
    caplog.set_level(logging.DEBUG)
    server = smtp_server("plain", auth=True, authenticator=_echoing_authenticator)
    config = email_config(
        server, emailSecurity="none", emailSmtpUser=SMTP_USER, emailSmtpPass=password
    )
    with pytest.raises(NodeExecutionError) as info:
        await call_node("sendEmail", config)
    assert (
        str(info.value)
        == "Failed to send email: SMTP authentication failed (535 Bad password: ***)"
    )
    ours = [r.getMessage() for r in caplog.records if not r.name.startswith("mail.")]
    assert not any(password in text for text in ours)  # the test server's own log quotes it


async def test_email_settings_supply_the_defaults(
    call_node: CallNode, make_resources: Any, smtp_server: StartSmtp, tls: Tls
) -> None:
    server = smtp_server("starttls", auth=True)
    resources = make_resources(
        SMTP_HOST="127.0.0.1",
        SMTP_PORT=server.port,
        SMTP_USER=SMTP_USER,
        SMTP_PASSWORD=SMTP_SECRET,
        SMTP_FROM="Service <service@example.com>",
        SMTP_SECURITY="starttls",
        SMTP_CA_FILE=str(tls.ca),
    )
    await call_node(
        "sendEmail", {"emailTo": "ops@example.com", "emailBody": "x"}, resources=resources
    )
    [got] = server.mailbox.received
    assert (got.tls, got.login, got.mail_from) == (True, SMTP_USER, "service@example.com")
    assert got.message["From"] == "Service <service@example.com>"
    assert got.message["Subject"] == "(No subject)"


async def test_email_settings_credentials_stay_with_their_host(
    call_node: CallNode, make_resources: Any, smtp_server: StartSmtp
) -> None:
    """A node naming another host gets neither SMTP_USER/SMTP_PASSWORD nor SMTP_PORT."""
    server = smtp_server("plain", auth=True)
    resources = make_resources(
        SMTP_HOST="smtp.internal.test",
        SMTP_PORT=2525,
        SMTP_USER=SMTP_USER,
        SMTP_PASSWORD=SMTP_SECRET,
        SMTP_FROM="service@example.com",
    )
    await call_node(
        "sendEmail", email_config(server, emailSecurity="none", emailFrom=""), resources=resources
    )
    [got] = server.mailbox.received
    assert (got.login, got.mail_from) == (None, "service@example.com")


async def test_email_refused_recipients(call_node: CallNode, smtp_server: StartSmtp) -> None:
    server = smtp_server("plain")
    server.mailbox.refuse = {
        "gone@example.com": "550 5.1.1 No such user",
        "full@example.com": "452 4.2.2 Mailbox full",
    }
    result = await call_node(
        "sendEmail",
        email_config(server, emailSecurity="none", emailTo="ops@example.com, gone@example.com"),
    )
    assert result["recipients"] == ["ops@example.com"]
    assert result["refusedRecipients"] == {"gone@example.com": "550 5.1.1 No such user"}
    assert result["message"] == "Email sent to ops@example.com; refused: gone@example.com"
    for to, retryable in [("gone@example.com", False), ("full@example.com", True)]:
        with pytest.raises(NodeExecutionError, match="all recipients refused") as info:
            await call_node("sendEmail", email_config(server, emailSecurity="none", emailTo=to))
        assert info.value.retryable is retryable


async def test_email_transient_failure_is_retried(
    make_ctx: MakeCtx, make_resources: Any, smtp_server: StartSmtp
) -> None:
    server = smtp_server("plain")
    server.mailbox.data_replies = ["451 4.3.0 Try again later"]
    node = NodeDef(
        id="n_mail",
        type="sendEmail",
        config=email_config(server, emailSecurity="none", retryDelayMs=1),
    )
    result = await run_with_retries(
        node, {"k": 1}, make_ctx("sendEmail", resources=make_resources())
    )
    assert result["attempts"] == 2
    assert len(server.mailbox.received) == 1


async def test_email_unreachable_server_is_retryable(call_node: CallNode) -> None:
    config = {
        "emailTo": "a@example.com",
        "emailFrom": "b@example.com",
        "emailSmtpHost": "127.0.0.1",
        "emailSmtpPort": str(free_port()),
        "emailSecurity": "none",
    }
    with pytest.raises(NodeExecutionError, match="Failed to send email: SMTPConnectError") as info:
        await call_node("sendEmail", config)
    assert info.value.retryable is True


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({}, r"Email configuration incomplete: no recipient \(emailTo\)"),
        ({"emailTo": "", "emailSmtpHost": "h"}, r"Email configuration incomplete: .*emailTo"),
        ({"emailTo": "{email}"}, r"Email configuration incomplete: no recipient \(emailTo\)"),
        (
            {"emailTo": "{nope}", "emailSmtpHost": "h", "emailFrom": "b@example.com"},
            "emailTo: '{nope}' is not an email address",
        ),
        (
            {"emailTo": "a@example.com"},
            "Email configuration incomplete: no SMTP host "
            r"\(set emailSmtpHost or SMTP_HOST\)",
        ),
        (
            {"emailTo": "a@example.com", "emailSmtpHost": "h"},
            "Email configuration incomplete: no sender",
        ),
        (
            {"emailTo": "a@example.com", "emailSmtpHost": "h", "emailSmtpUser": "u@example.com"},
            "Email configuration incomplete: emailSmtpUser and emailSmtpPass go together",
        ),
        (
            {"emailTo": "a@example.com", "emailSmtpHost": "h", "emailSmtpPass": "pw-only-123"},
            "Email configuration incomplete: emailSmtpUser and emailSmtpPass go together",
        ),
        (
            {"emailTo": "a@example.com", "emailSmtpHost": "h", "emailSmtpPort": "smtp"},
            "emailSmtpPort must be a number",
        ),
        (
            {"emailTo": "a@example.com", "emailSmtpHost": "h", "emailSmtpPort": 0},
            "emailSmtpPort must be between",
        ),
        (
            {"emailTo": "a@example.com", "emailSmtpHost": "h", "emailSecurity": "tls"},
            "emailSecurity must be one of auto, starttls, ssl, none",
        ),
        (
            {"emailTo": "not-an-address", "emailSmtpHost": "h", "emailFrom": "b@example.com"},
            "emailTo: 'not-an-address' is not an email address",
        ),
        (
            {"emailTo": "a@example.com", "emailSmtpHost": "h", "emailFrom": "robot"},
            "emailFrom: 'robot' is not an email address",
        ),
    ],
)
async def test_email_config_errors(
    call_node: CallNode, config: dict[str, Any], message: str
) -> None:
    with pytest.raises(NodeConfigError, match=message) as info:
        await call_node("sendEmail", config, {"email": ""})
    assert "pw-only-123" not in str(info.value)


def test_email_user_address_is_the_sender_and_port_picks_security() -> None:
    from tasks.messaging import SendEmailConfig, smtp_target

    settings = make_settings()
    cases = [
        ({}, 587, "starttls"),
        ({"emailSmtpPort": "465"}, 465, "ssl"),
        ({"emailSmtpPort": 25}, 25, "auto"),
        ({"emailSecurity": "ssl"}, 465, "ssl"),
        ({"emailSecurity": "NONE"}, 25, "none"),
        ({"emailSmtpPort": "2525"}, 2525, "auto"),
    ]
    for extra, port, security in cases:
        config = SendEmailConfig.model_validate(
            {
                "emailSmtpHost": "smtp.example.com",
                "emailSmtpUser": "me@example.com",
                "emailSmtpPass": "secret",
                **extra,
            }
        )
        target = smtp_target(config, settings)
        assert (target.port, target.security, target.sender) == (port, security, "me@example.com")
        assert "secret" not in repr(config)


def test_messaging_registration() -> None:
    for name in ("sendEmail", "sendSMS"):
        spec = get_spec(name)
        assert (spec.network, spec.retries) == (True, 2)


class Twilio:
    """A local server speaking Twilio's Messages API: basic auth, form fields, its error JSON.
    `script` (statuses) makes the next answers fail with that status before the real ones."""

    def __init__(self) -> None:
        self.script: list[int] = []
        self.path = f"/2010-04-01/Accounts/{SID}/Messages.json"
        self.server = MockServer({("POST", self.path): self.messages})
        self.url = f"http://127.0.0.1:{self.server.port}"

    def error(self, status: int, code: int, message: str, **extra: Any) -> tuple[int, Any]:
        return status, {
            "code": code,
            "message": message,
            "more_info": f"https://www.twilio.com/docs/errors/{code}",
            "status": status,
            **extra,
        }

    def messages(self, request: dict[str, Any]) -> tuple[int, Any]:
        auth = request["headers"].get("authorization", "")
        expected = "Basic " + base64.b64encode(f"{SID}:{TOKEN}".encode()).decode()
        if auth != expected:
            return self.error(
                401, 20003, "Authenticate", detail="Your AccountSid or AuthToken was incorrect."
            )
        if self.script:
            status = self.script.pop(0)
            if status == 429:
                return self.error(429, 20429, "Too Many Requests")
            return self.error(status, 20500, "An internal server error has occurred")
        form = {k: v[0] for k, v in urllib.parse.parse_qs(request["body"].decode()).items()}
        if not form.get("To", "").startswith("+"):
            return self.error(
                400, 21211, f"The 'To' number {form.get('To')} is not a valid phone number."
            )
        return 201, {
            "account_sid": SID,
            "api_version": "2010-04-01",
            "body": form["Body"],
            "date_created": "Thu, 24 Aug 2023 05:01:45 +0000",
            "direction": "outbound-api",
            "error_code": None,
            "error_message": None,
            "from": form["From"],
            "num_segments": "1",
            "price": None,
            "price_unit": "USD",
            "sid": "SM" + "1" * 32,
            "status": "queued",
            "to": form["To"],
            "uri": f"/2010-04-01/Accounts/{SID}/Messages/SM{'1' * 32}.json",
        }

    def forms(self) -> list[dict[str, str]]:
        return [
            {k: v[0] for k, v in urllib.parse.parse_qs(r["body"].decode()).items()}
            for r in self.server.requests
        ]


@pytest.fixture(scope="module")
def twilio_server() -> Iterator[Twilio]:
    server = Twilio()
    yield server
    server.server.close()
    server.server.server.server_close()


@pytest.fixture
def twilio(twilio_server: Twilio) -> Twilio:
    """The module's Twilio server with no recorded request and no scripted failure."""
    twilio_server.server.requests.clear()
    twilio_server.script = []
    return twilio_server


def sms_config(**extra: Any) -> dict[str, Any]:
    return {
        "smsTo": "+34600111222",
        "smsBody": "Hello",
        "twilioAccountSid": SID,
        "twilioAuthToken": TOKEN,
        "twilioFromNumber": FROM_NUMBER,
        **extra,
    }


async def test_sms_posts_the_form_with_basic_auth(
    call_node: CallNode, real_resources: Callable[..., Resources], twilio: Twilio
) -> None:
    data = [{"id": 7}]
    result = await call_node(
        "sendSMS", sms_config(), data, resources=real_resources(TWILIO_BASE_URL=twilio.url)
    )
    assert result == {
        "success": True,
        "message": "SMS sent to +34600111222",
        "outputData": data,
        "messageSid": "SM" + "1" * 32,
        "status": "queued",
    }
    [request] = twilio.server.requests
    assert (request["method"], request["path"]) == ("POST", twilio.path)
    assert request["headers"]["content-type"] == "application/x-www-form-urlencoded"
    assert twilio.forms() == [{"To": "+34600111222", "From": FROM_NUMBER, "Body": "Hello"}]


@pytest.mark.parametrize(
    ("data", "to", "body", "sent_to", "sent_body"),
    [
        (
            [{"phone": "+34611000111", "name": "Ana", "v": 1.50}, {"phone": "+1"}],
            "{phone}",
            "Hi {name}, value {{v}}",
            "+34611000111",
            "Hi Ana, value 1.5",
        ),
        (
            {"phone": "+34622000222", "ok": False},
            "{{phone}}",
            "ok={ok} {missing}",
            "+34622000222",
            "ok=false {missing}",
        ),
        ("text", "+34600111222", "{x}", "+34600111222", "{x}"),
    ],
)
async def test_sms_templates_from_the_first_record(
    call_node: CallNode,
    real_resources: Callable[..., Resources],
    twilio: Twilio,
    data: Any,
    to: str,
    body: str,
    sent_to: str,
    sent_body: str,
) -> None:
    result = await call_node(
        "sendSMS",
        sms_config(smsTo=to, smsBody=body),
        data,
        resources=real_resources(TWILIO_BASE_URL=twilio.url),
    )
    assert twilio.forms() == [{"To": sent_to, "From": FROM_NUMBER, "Body": sent_body}]
    assert result["message"] == f"SMS sent to {sent_to}"


async def test_sms_credentials_from_settings_and_config_wins(
    call_node: CallNode, real_resources: Callable[..., Resources], twilio: Twilio
) -> None:
    resources = real_resources(
        TWILIO_BASE_URL=twilio.url,
        TWILIO_ACCOUNT_SID=SID,
        TWILIO_AUTH_TOKEN=TOKEN,
        TWILIO_FROM_NUMBER="+15550000000",
    )
    await call_node("sendSMS", {"smsTo": "+34600111222", "smsBody": "a"}, resources=resources)
    await call_node(
        "sendSMS",
        {
            "smsTo": "+34600111222",
            "smsBody": "b",
            "twilioFromNumber": FROM_NUMBER,
            "twilioAuthToken": TOKEN,
        },
        resources=resources,
    )
    assert [f["From"] for f in twilio.forms()] == ["+15550000000", FROM_NUMBER]


@pytest.mark.parametrize(
    ("drop", "named"),
    [
        ("smsTo", "smsTo"),
        ("smsBody", "smsBody"),
        ("twilioAccountSid", "twilioAccountSid (or TWILIO_ACCOUNT_SID)"),
        ("twilioAuthToken", "twilioAuthToken (or TWILIO_AUTH_TOKEN)"),
        ("twilioFromNumber", "twilioFromNumber (or TWILIO_FROM_NUMBER)"),
    ],
)
async def test_sms_incomplete_configuration(
    call_node: CallNode,
    real_resources: Callable[..., Resources],
    twilio: Twilio,
    drop: str,
    named: str,
) -> None:
    config = sms_config(**{drop: ""})
    with pytest.raises(NodeConfigError, match=r"^SMS configuration incomplete\. ") as info:
        await call_node("sendSMS", config, resources=real_resources(TWILIO_BASE_URL=twilio.url))
    assert str(info.value).endswith("missing: " + named)
    assert TOKEN not in str(info.value)
    assert twilio.server.requests == []


@pytest.mark.parametrize("token", ["~", "~^", "~^!"])
async def test_sms_short_token_is_redacted_from_the_error(
    call_node: CallNode, make_resources: Any, token: str
) -> None:
    def twilio_echo(request: httpx.Request) -> httpx.Response:
        return httpx.Response(401, json={"code": 20003, "message": f"Token {token} refused"})

    resources = make_resources(twilio_echo)
    with pytest.raises(NodeExecutionError) as info:
        await call_node("sendSMS", sms_config(twilioAuthToken=token), resources=resources)
    assert str(info.value) == "Failed to send SMS: Twilio error 20003: Token *** refused [HTTP 401]"


async def test_sms_account_sid_is_checked(
    call_node: CallNode, real_resources: Callable[..., Resources], twilio: Twilio
) -> None:
    with pytest.raises(NodeConfigError, match="twilioAccountSid must contain only"):
        await call_node(
            "sendSMS",
            sms_config(twilioAccountSid="AC../../x"),
            resources=real_resources(TWILIO_BASE_URL=twilio.url),
        )
    assert twilio.server.requests == []


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (
            sms_config(twilioAuthToken="Wrong-Token-123456"),
            "Failed to send SMS: Twilio error 20003: Authenticate (Your AccountSid or AuthToken "
            "was incorrect.) [HTTP 401] https://www.twilio.com/docs/errors/20003",
        ),
        (
            sms_config(smsTo="600111222"),
            "Failed to send SMS: Twilio error 21211: The 'To' number 600111222 is not a valid "
            "phone number. [HTTP 400] https://www.twilio.com/docs/errors/21211",
        ),
    ],
)
async def test_sms_twilio_client_errors_are_clear_and_not_retried(
    make_ctx: MakeCtx,
    real_resources: Callable[..., Resources],
    twilio: Twilio,
    caplog: pytest.LogCaptureFixture,
    config: dict[str, Any],
    message: str,
) -> None:
    caplog.set_level(logging.DEBUG)
    node = NodeDef(id="n_sms", type="sendSMS", config={**config, "retryDelayMs": 1})
    ctx = make_ctx("sendSMS", resources=real_resources(TWILIO_BASE_URL=twilio.url))
    with pytest.raises(NodeExecutionError) as info:
        await run_with_retries(node, None, ctx)
    assert str(info.value) == message
    assert info.value.retryable is False
    assert len(twilio.server.requests) == 1
    for secret in (TOKEN, "Wrong-Token-123456"):
        assert secret not in str(info.value)
        assert secret not in caplog.text


@pytest.mark.parametrize(
    ("script", "requests", "ok"),
    [
        ([500, 500, 500], 3, False),
        ([429, 429, 429], 3, False),
        ([503], 2, True),
        ([500, 502], 3, True),
    ],
)
async def test_sms_server_errors_are_retried_at_most_three_times(
    make_ctx: MakeCtx,
    real_resources: Callable[..., Resources],
    twilio: Twilio,
    script: list[int],
    requests: int,
    ok: bool,
) -> None:
    twilio.script = list(script)
    node = NodeDef(id="n_sms", type="sendSMS", config=sms_config(retryDelayMs=1))
    ctx = make_ctx("sendSMS", resources=real_resources(TWILIO_BASE_URL=twilio.url))
    if ok:
        result = await run_with_retries(node, {"x": 1}, ctx)
        assert (result["status"], result["attempts"]) == ("queued", requests)
    else:
        with pytest.raises(NodeExecutionError, match=r"Twilio error 20(500|429)") as info:
            await run_with_retries(node, None, ctx)
        assert info.value.retryable is True
    assert len(twilio.server.requests) == requests


async def test_sms_error_body_that_is_not_twilio_json(
    call_node: CallNode, real_resources: Callable[..., Resources], twilio: Twilio
) -> None:
    """A base URL that is not Twilio: the MockServer answers 404 {"error": "no route"}."""
    with pytest.raises(NodeExecutionError, match="Twilio answered HTTP 404") as info:
        await call_node(
            "sendSMS",
            sms_config(),
            resources=real_resources(TWILIO_BASE_URL=twilio.url + "/elsewhere"),
        )
    assert info.value.retryable is False


async def test_sms_unreachable_twilio_is_retryable(
    call_node: CallNode, real_resources: Callable[..., Resources]
) -> None:
    with pytest.raises(NodeExecutionError, match="Twilio unreachable") as info:
        await call_node(
            "sendSMS",
            sms_config(),
            resources=real_resources(TWILIO_BASE_URL=f"http://127.0.0.1:{free_port()}"),
        )
    assert info.value.retryable is True
