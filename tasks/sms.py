"""The sendSMS node: Twilio's REST Messages API through the shared HTTP client.

It passes its input through and templates its texts from it (first record of a list) with
`{{field}}` and the editor's `{field}`. With the service's account (no `twilioAuthToken` in the
node) messages go from TWILIO_FROM_NUMBER only. The token never reaches a log or an error text.
"""

import logging
import re
from typing import Any

import httpx
from pydantic import AliasChoices, Field, SecretStr

from errors import NodeConfigError, NodeExecutionError
from tasks.context import RunContext
from tasks.redaction import redact
from tasks.registry import Envelope, NodeConfig, envelope, node
from tasks.values import first_record, render_fields

logger = logging.getLogger(__name__)

TWILIO_TIMEOUT_S = 30.0
_SID = re.compile(r"^[A-Za-z0-9]+$")


class SendSmsConfig(NodeConfig):
    to: str | None = Field(default=None, validation_alias=AliasChoices("smsTo"))
    body: str | None = Field(default=None, validation_alias=AliasChoices("smsBody"))
    account_sid: str | None = Field(default=None, validation_alias=AliasChoices("twilioAccountSid"))
    auth_token: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices("twilioAuthToken")
    )
    from_number: str | None = Field(default=None, validation_alias=AliasChoices("twilioFromNumber"))


def _twilio_error(response: httpx.Response) -> str:
    """Twilio's error JSON `{code, message, more_info, status}` as one line."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if not isinstance(body, dict) or not body.get("message"):
        return f"Twilio answered HTTP {response.status_code}: {response.text[:300]}"
    text = f"Twilio error {body.get('code', '?')}: {body['message']}"
    if body.get("detail"):
        text += f" ({body['detail']})"
    text += f" [HTTP {response.status_code}]"
    return text + (f" {body['more_info']}" if body.get("more_info") else "")


@node("sendSMS", config=SendSmsConfig, retries=2, timeout_s=60, network=True)
async def send_sms(config: SendSmsConfig, data: Any, ctx: RunContext) -> Envelope:
    """POST <TWILIO_BASE_URL>/2010-04-01/Accounts/<sid>/Messages.json (basic auth sid:token,
    form To/From/Body); output = the input, extras `messageSid` and `status`."""
    settings = ctx.settings
    record = first_record(data)
    to = render_fields(config.to or "", record).strip()
    body = render_fields(config.body or "", record)
    sid = (config.account_sid or settings.TWILIO_ACCOUNT_SID or "").strip()
    secret = config.auth_token or settings.TWILIO_AUTH_TOKEN
    token = secret.get_secret_value() if secret else ""
    sender = (config.from_number or settings.TWILIO_FROM_NUMBER or "").strip()
    service = config.auth_token is None and settings.TWILIO_AUTH_TOKEN is not None
    own_number = (settings.TWILIO_FROM_NUMBER or "").strip()
    if service and sender != own_number:
        raise NodeConfigError(
            "twilioFromNumber is refused with the service's Twilio account: its SMS are sent "
            "from TWILIO_FROM_NUMBER only (give twilioAuthToken to use your own account)"
        )
    missing = [
        name
        for name, value in [
            ("smsTo", to),
            ("smsBody", body.strip()),
            ("twilioAccountSid (or TWILIO_ACCOUNT_SID)", sid),
            ("twilioAuthToken (or TWILIO_AUTH_TOKEN)", token),
            ("twilioFromNumber (or TWILIO_FROM_NUMBER)", sender),
        ]
        if not value
    ]
    if missing:
        raise NodeConfigError(
            "SMS configuration incomplete. Please provide Twilio credentials "
            "and phone numbers; missing: " + ", ".join(missing)
        )
    if not _SID.match(sid):
        raise NodeConfigError("twilioAccountSid must contain only letters and digits (AC…)")
    url = f"{settings.TWILIO_BASE_URL.rstrip('/')}/2010-04-01/Accounts/{sid}/Messages.json"
    try:
        response = await ctx.http.post(
            url,
            data={"To": to, "From": sender, "Body": body},
            auth=(sid, token),
            timeout=TWILIO_TIMEOUT_S,
        )
    except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
        raise NodeExecutionError(
            f"Failed to send SMS: Twilio unreachable ({type(exc).__name__})", retryable=True
        ) from None
    except httpx.HTTPError as exc:
        # The request may have reached Twilio: not repeated, so no SMS is sent twice.
        raise NodeExecutionError(
            f"Failed to send SMS: {type(exc).__name__} while waiting for "
            "Twilio (the message may have been sent)"
        ) from None
    if not response.is_success:
        code = response.status_code
        raise NodeExecutionError(
            f"Failed to send SMS: {redact(_twilio_error(response), token)}",
            retryable=code >= 500 or code == 429,
        )
    try:
        result = response.json()
    except ValueError:
        result = {}
    result = result if isinstance(result, dict) else {}
    return envelope(
        f"SMS sent to {to}", data, messageSid=result.get("sid"), status=result.get("status")
    )
