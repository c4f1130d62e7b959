"""The sendEmail node: SMTP through aiosmtplib (sendSMS is in `tasks/sms.py`).

It passes its input through and templates its texts from it (first record of a list) with
`{{field}}` and the editor's `{field}`. Passwords never reach a log or an error text.
"""

import asyncio
import html
import logging
import re
import socket
import ssl
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.utils import formataddr, formatdate, getaddresses, make_msgid
from typing import Any

import aiosmtplib
from pydantic import AliasChoices, Field, SecretStr

from config import Settings
from errors import NodeConfigError, NodeExecutionError
from tasks.context import RunContext
from tasks.redaction import redact
from tasks.registry import Envelope, NodeConfig, envelope, node
from tasks.values import first_record, parse_port, render_fields

logger = logging.getLogger(__name__)

SMTP_TIMEOUT_S = 30.0
SECURITY_MODES = ("auto", "starttls", "ssl", "none")
PORT_SECURITY = {465: "ssl", 587: "starttls"}
NO_SUBJECT = "(No subject)"
_ADDRESS = re.compile(r"^[^@\s<>]+@[^@\s<>]+$")


class SendEmailConfig(NodeConfig):
    to: str | None = Field(default=None, validation_alias=AliasChoices("emailTo"))
    subject: str | None = Field(default=None, validation_alias=AliasChoices("emailSubject"))
    body: str | None = Field(default=None, validation_alias=AliasChoices("emailBody"))
    host: str | None = Field(default=None, validation_alias=AliasChoices("emailSmtpHost"))
    port: str | int | None = Field(default=None, validation_alias=AliasChoices("emailSmtpPort"))
    user: str | None = Field(default=None, validation_alias=AliasChoices("emailSmtpUser"))
    password: SecretStr | None = Field(default=None, validation_alias=AliasChoices("emailSmtpPass"))
    sender: str | None = Field(default=None, validation_alias=AliasChoices("emailFrom"))
    security: str | None = Field(default=None, validation_alias=AliasChoices("emailSecurity"))


@dataclass(frozen=True)
class SmtpTarget:
    """Where and how to send: the node's keys, else the SMTP_* settings."""

    host: str
    port: int
    security: str
    user: str | None
    password: str | None = field(repr=False)
    sender: str
    reply_to: str | None = None
    relay: bool = False
    """Sent through SMTP_HOST, the service's relay: From is SMTP_FROM (or SMTP_ALLOWED_FROM)."""


def _incomplete(detail: str) -> NodeConfigError:
    return NodeConfigError(f"Email configuration incomplete: {detail}")


def smtp_target(config: SendEmailConfig, settings: Settings) -> SmtpTarget:
    """Resolve host, port, security, credentials and sender. SMTP_PORT, SMTP_SECURITY,
    SMTP_USER and SMTP_PASSWORD belong to SMTP_HOST: they are used only when the node sends
    through that host, so a workflow naming another host never receives the service's password."""
    own_host = (settings.SMTP_HOST or "").strip()
    host = (config.host or "").strip() or own_host
    if not host:
        raise _incomplete("no SMTP host (set emailSmtpHost or SMTP_HOST)")
    own = bool(own_host) and host.lower() == own_host.lower()
    if own and settings.SMTP_PASSWORD and not config.password and settings.SMTP_SECURITY == "none":
        raise NodeConfigError(
            "SMTP_SECURITY is none while SMTP_PASSWORD is set: the service's SMTP password is "
            "never sent over an unencrypted connection (nothing was sent)"
        )
    security = (config.security or (settings.SMTP_SECURITY if own else "auto")).strip().lower()
    if security not in SECURITY_MODES:
        raise NodeConfigError(
            f"emailSecurity must be one of {', '.join(SECURITY_MODES)} (got {config.security!r})"
        )
    if config.port is not None and config.port != "":
        port = parse_port(config.port, "emailSmtpPort")
    elif own and settings.SMTP_PORT:
        port = settings.SMTP_PORT
    else:
        port = {"ssl": 465, "none": 25}.get(security, 587)
    if security == "auto":
        security = PORT_SECURITY.get(port, "auto")
    user, password = config.user, config.password.get_secret_value() if config.password else None
    if not user and not password and own:
        user = settings.SMTP_USER
        password = settings.SMTP_PASSWORD.get_secret_value() if settings.SMTP_PASSWORD else None
    if bool(user) != bool(password):
        raise _incomplete("emailSmtpUser and emailSmtpPass go together (give both or neither)")
    if own and security == "none" and password and not config.password:
        raise NodeConfigError(
            "emailSecurity none is refused for SMTP_HOST: the service's SMTP password is never "
            "sent over an unencrypted connection (nothing was sent)"
        )
    user_address = user if user and _ADDRESS.match(user) else None
    if own:
        return _relay_target(config, settings, (host, port, security), user, password)
    sender = config.sender or user_address or settings.SMTP_FROM
    if not sender:
        raise _incomplete(
            "no sender (set emailFrom or SMTP_FROM, or use an address as emailSmtpUser)"
        )
    return SmtpTarget(host, port, security, user or None, password or None, sender.strip())


def _relay_target(
    config: SendEmailConfig,
    settings: Settings,
    where: tuple[str, int, str],
    user: str | None,
    password: str | None,
) -> SmtpTarget:
    """Through SMTP_HOST the message is from SMTP_FROM (else SMTP_USER when it is an address);
    a node's emailFrom is the sender only when SMTP_ALLOWED_FROM lists it, else the Reply-To."""
    user_address = user if user and _ADDRESS.match(user) else None
    sender = settings.SMTP_FROM or user_address
    if not sender:
        raise _incomplete("no sender for SMTP_HOST (set SMTP_FROM)")
    reply_to = (config.sender or "").strip() or None
    allowed = {a.strip().lower() for a in settings.SMTP_ALLOWED_FROM.split(",") if a.strip()}
    named = {a.lower() for _, a in getaddresses([reply_to or ""]) if a}
    if reply_to and named and named <= allowed:
        sender, reply_to = reply_to, None
    host, port, security = where
    return SmtpTarget(
        host, port, security, user or None, password or None, sender.strip(), reply_to, True
    )


def _addresses(text: str, key: str) -> list[tuple[str, str]]:
    """(display name, address) pairs of a comma/semicolon/newline separated list; NodeConfigError
    naming `key` for anything that is not an address."""
    pairs = []
    for name, address in getaddresses([re.sub(r"[;\r\n]", ",", text)]):
        if not name and not address:
            continue
        if not _ADDRESS.match(address):
            raise NodeConfigError(f"{key}: {(name or address)!r} is not an email address")
        pairs.append((name, address))
    if not pairs and text.strip(" ,;\r\n"):
        raise NodeConfigError(f"{key}: {text.strip()!r} is not an email address")
    return pairs


def build_message(
    target: SmtpTarget, to: str, subject: str, body: str, max_recipients: int
) -> tuple[EmailMessage, list[str]]:
    """A multipart/alternative message (plain text + HTML with `<br>` line breaks) and the
    envelope recipients (at most `max_recipients`, EMAIL_MAX_RECIPIENTS)."""
    sender = target.sender
    recipients = _addresses(to, "emailTo")
    if not recipients:
        raise _incomplete("no recipient (emailTo)")
    if len(recipients) > max_recipients:
        raise NodeConfigError(
            f"emailTo has {len(recipients)} recipients; at most {max_recipients} are allowed "
            "(EMAIL_MAX_RECIPIENTS)"
        )
    senders = _addresses(sender, "emailFrom")
    if len(senders) != 1:
        raise NodeConfigError(f"emailFrom: {sender!r} must be exactly one email address")
    body = body.replace("\r\n", "\n").replace("\r", "\n")
    message = EmailMessage()
    message["Subject"] = " ".join(subject.split()) or NO_SUBJECT
    message["From"] = formataddr(senders[0])
    message["To"] = ", ".join(formataddr(pair) for pair in recipients)
    if target.reply_to:
        replies = _addresses(target.reply_to, "emailFrom")
        message["Reply-To"] = ", ".join(formataddr(pair) for pair in replies)
    message["Date"] = formatdate(usegmt=True)
    message["Message-ID"] = make_msgid(domain=senders[0][1].rsplit("@", 1)[-1])
    message.set_content(body)
    html_body = html.escape(body).replace("\n", "<br>\n")
    message.add_alternative(f"<html><body>{html_body}</body></html>", subtype="html")
    return message, [a for _, a in recipients]


def _tls_context(ca_file: str | None) -> ssl.SSLContext:
    context = ssl.create_default_context()
    if ca_file:
        context.load_verify_locations(cafile=ca_file)
    return context


def _smtp_failure(exc: BaseException, password: str | None) -> NodeExecutionError:
    """`Failed to send email: …`; retried for connection trouble and 4xx (transient) replies."""
    cause = exc.__cause__ if isinstance(exc.__cause__, ssl.SSLError) else exc
    if isinstance(cause, ssl.SSLError):
        text, retryable = f"TLS failed: {cause}", False
    elif isinstance(exc, aiosmtplib.SMTPAuthenticationError):
        text, retryable = f"SMTP authentication failed ({exc.code} {exc.message})", False
    elif isinstance(exc, aiosmtplib.SMTPRecipientsRefused):
        codes = [r.code for r in exc.recipients]
        text = "all recipients refused: " + "; ".join(
            f"{r.recipient} ({r.code} {r.message})" for r in exc.recipients
        )
        retryable = all(400 <= c < 500 for c in codes)
    elif isinstance(exc, aiosmtplib.SMTPResponseException):
        text, retryable = f"SMTP error {exc.code}: {exc.message}", 400 <= exc.code < 500
    elif isinstance(exc, aiosmtplib.SMTPNotSupported | aiosmtplib.SMTPHeloError):
        text, retryable = str(exc), False
    elif isinstance(
        exc,
        aiosmtplib.SMTPConnectError
        | aiosmtplib.SMTPServerDisconnected
        | aiosmtplib.SMTPTimeoutError
        | OSError,
    ):
        text, retryable = f"{type(exc).__name__}: {exc}", True
    else:
        text, retryable = str(exc) or type(exc).__name__, False
    return NodeExecutionError(
        f"Failed to send email: {redact(text, password)}", retryable=retryable
    )


async def _deliver(
    target: SmtpTarget,
    message: EmailMessage,
    recipients: list[str],
    ctx: RunContext,
) -> dict[str, Any]:
    """Connect (implicit TLS, STARTTLS, opportunistic STARTTLS or plain), log in when there are
    credentials (never in clear text unless emailSecurity is none) and send. A host other than
    SMTP_HOST is reached through the outbound policy: a socket to a checked address, the name
    kept for TLS."""
    ca_file = ctx.settings.SMTP_CA_FILE
    try:
        context = await asyncio.to_thread(_tls_context, ca_file)
    except OSError as exc:
        raise NodeExecutionError(
            f"Failed to send email: SMTP_CA_FILE cannot be read ({exc.strerror or exc})"
        ) from None
    start_tls = {"starttls": True, "none": False}.get(target.security)
    smtp = aiosmtplib.SMTP(
        hostname=target.host,
        port=target.port,
        timeout=SMTP_TIMEOUT_S,
        use_tls=target.security == "ssl",
        start_tls=start_tls,
        tls_context=context,
    )
    try:
        if not _own_host(target.host, ctx.settings):
            smtp.sock, smtp.port = await _checked_socket(target, ctx), None
        await smtp.connect()
        try:
            encrypted = smtp.get_transport_info("sslcontext") is not None
            if target.user and target.password:
                if not encrypted and target.security != "none":
                    raise NodeExecutionError(
                        f"Failed to send email: {target.host}:{target.port} offers no TLS, so "
                        "the SMTP password is not sent (set emailSecurity to none to allow "
                        "a plain-text login)"
                    )
                await smtp.login(target.user, target.password)
            refused, _ = await smtp.send_message(
                message, sender=_envelope_sender(target), recipients=recipients
            )
        finally:
            await _quit(smtp)
    except NodeExecutionError:
        raise
    except (aiosmtplib.SMTPException, OSError) as exc:
        raise _smtp_failure(exc, target.password) from None
    return {r: f"{response.code} {response.message}" for r, response in refused.items()}


async def _checked_socket(target: SmtpTarget, ctx: RunContext) -> socket.socket:
    """A socket to a policy-checked address of the node's host; failures read as aiosmtplib's."""
    where = f"{target.host} on port {target.port}"
    try:
        return await ctx.resources.outbound.connect(target.host, target.port, SMTP_TIMEOUT_S)
    except TimeoutError as exc:
        raise aiosmtplib.SMTPConnectTimeoutError(f"Timed out connecting to {where}") from exc
    except OSError as exc:
        raise aiosmtplib.SMTPConnectError(f"Error connecting to {where}: {exc}") from exc


def _own_host(host: str, settings: Settings) -> bool:
    """SMTP_HOST is the operator's relay: trusted, exempt from the outbound policy."""
    own = (settings.SMTP_HOST or "").strip().lower()
    return bool(own) and host.strip().lower() == own


def _envelope_sender(target: SmtpTarget) -> str:
    pairs = getaddresses([target.sender])
    return pairs[0][1] if pairs else target.sender


async def _quit(smtp: aiosmtplib.SMTP) -> None:
    if not smtp.is_connected:
        return
    try:
        await smtp.quit()
    except (aiosmtplib.SMTPException, OSError):
        smtp.close()


@node("sendEmail", config=SendEmailConfig, retries=2, timeout_s=120, network=True)
async def send_email(config: SendEmailConfig, data: Any, ctx: RunContext) -> Envelope:
    """Templated to/subject/body from the first input record; output = the input."""
    record = first_record(data)
    to = render_fields(config.to or "", record).strip()
    if not to:
        raise _incomplete("no recipient (emailTo)")
    target = smtp_target(config, ctx.settings)
    message, recipients = build_message(
        target,
        to,
        render_fields(config.subject or "", record),
        render_fields(config.body or "", record),
        ctx.settings.EMAIL_MAX_RECIPIENTS,
    )
    refused = await _deliver(target, message, recipients, ctx)
    sent = [r for r in recipients if r not in refused]
    logger.info(
        "sendEmail: sent through %s:%s (%s) to %d recipient(s)",
        target.host,
        target.port,
        target.security,
        len(sent),
        extra={"execution_id": ctx.execution_id, "node_id": ctx.node_id, "action": "send_email"},
    )
    text = f"Email sent to {', '.join(sent)}"
    if refused:
        text += "; refused: " + ", ".join(refused)
    return envelope(
        text, data, messageId=message["Message-ID"], recipients=sent, refusedRecipients=refused
    )
