"""Nodes that query third-party data APIs with a key from settings: esios (Red Eléctrica's
indicators) and climatiq (emission-factor search, or a factor stored in the node's config)."""

import re
from datetime import UTC, date, datetime
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import httpx
from pydantic import AliasChoices, Field, SecretStr, field_validator

from errors import NodeConfigError, NodeExecutionError
from tasks.context import RunContext
from tasks.http_request import send
from tasks.redaction import redact
from tasks.registry import Envelope, NodeConfig, envelope, node

ESIOS_ACCEPT = "application/json; application/vnd.esios-api-v1+json"
ESIOS_ZONE = "Europe/Madrid"
_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
_INDICATOR = re.compile(r"\d{1,10}")


def _key(secret: SecretStr | None, setting: str, service: str) -> str:
    value = secret.get_secret_value().strip() if secret else ""
    if not value:
        raise NodeConfigError(f"{service} API key not configured (set {setting})")
    return value


def _body_message(response: httpx.Response) -> str:
    """A short human text from an error body: JSON `message`/`error`, plain text, never HTML."""
    try:
        body = response.json()
    except ValueError:
        text = response.text.strip()
        if not text or text.lstrip().startswith("<"):
            return ""
        return " ".join(text.split())[:200]
    if isinstance(body, dict):
        parts = [
            str(body[k])
            for k in ("message", "error", "errors", "detail")
            if body.get(k) not in (None, "", [], {})
        ]
        code = body.get("error_code")
        text = "; ".join(dict.fromkeys(parts))
        return f"{text} [{code}]" if code else text
    return str(body)[:200]


def _check(
    response: httpx.Response, service: str, setting: str, secret: str, not_found: str
) -> None:
    """Raise a clear node error for a non-2xx answer (429 and 5xx are retryable)."""
    code = response.status_code
    if 200 <= code < 300:
        return
    detail = _body_message(response)
    suffix = f": {detail}" if detail else ""
    if code in (401, 403):
        text = f"{service} rejected the API key (HTTP {code}); check {setting}{suffix}"
    elif code == 404:
        text = f"{not_found} (HTTP 404){suffix}"
    elif code == 429:
        wait = response.headers.get("retry-after")
        hint = f"; retry after {wait} s" if wait else ""
        text = f"{service} rate limit exceeded (HTTP 429){hint}{suffix}"
    elif code >= 500:
        text = f"{service} server error (HTTP {code}){suffix}"
    else:
        text = f"{service} request refused (HTTP {code}){suffix}"
    raise NodeExecutionError(redact(text, secret), retryable=code == 429 or code >= 500)


def _json(response: httpx.Response, service: str) -> Any:
    try:
        return response.json()
    except ValueError:
        raise NodeExecutionError(
            f"{service} answered HTTP {response.status_code} with a body that is not JSON "
            f"({response.headers.get('content-type', 'no content type')})"
        ) from None


def _today_in_spain() -> str:
    try:
        return datetime.now(ZoneInfo(ESIOS_ZONE)).date().isoformat()
    except ZoneInfoNotFoundError:  # no tz database on the machine: UTC is at most a day off
        return datetime.now(UTC).date().isoformat()


class EsiosConfig(NodeConfig):
    indicator: str = Field(
        default="1001", validation_alias=AliasChoices("esiosArchiveId", "indicator")
    )
    day: str | None = Field(default=None, validation_alias=AliasChoices("esiosDate"))

    @field_validator("indicator", "day", mode="before")
    @classmethod
    def _text(cls, value: Any) -> Any:
        return str(value).strip() if isinstance(value, int | float | str) else value


@node("esios", config=EsiosConfig, retries=2, timeout_s=60, network=True)
async def esios(config: EsiosConfig, data: Any, ctx: RunContext) -> Envelope:
    """One day of an ESIOS indicator (`esiosArchiveId`, default 1001 = PVPC) as parsed JSON;
    `esiosDate` is YYYY-MM-DD, default today in Spain (Europe/Madrid)."""
    if not _INDICATOR.fullmatch(config.indicator):
        raise NodeConfigError(
            f"esiosArchiveId must be a numeric ESIOS indicator id (got {config.indicator!r})"
        )
    day = config.day or _today_in_spain()
    try:
        if not _DATE.fullmatch(day):
            raise ValueError
        date.fromisoformat(day)
    except ValueError:
        raise NodeConfigError(f"esiosDate must be a date as YYYY-MM-DD (got {day!r})") from None
    key = _key(ctx.settings.ESIOS_API_KEY, "ESIOS_API_KEY", "ESIOS")
    url = f"{ctx.settings.ESIOS_BASE_URL.rstrip('/')}/indicators/{config.indicator}"
    response = await send(
        ctx,
        "GET",
        url,
        label="ESIOS request",
        secret=key,
        params={"start_date": f"{day}T00:00", "end_date": f"{day}T23:59"},
        headers={"Accept": ESIOS_ACCEPT, "Content-Type": "application/json", "x-api-key": key},
    )
    _check(response, "ESIOS", "ESIOS_API_KEY", key, f"ESIOS indicator {config.indicator} not found")
    body = _json(response, "ESIOS")
    indicator = body.get("indicator") if isinstance(body, dict) else None
    indicator = indicator if isinstance(indicator, dict) else {}
    values = indicator.get("values")
    count = len(values) if isinstance(values, list) else 0
    name = indicator.get("short_name") or indicator.get("name") or config.indicator
    return envelope(
        f"ESIOS indicator {config.indicator} ({name}) on {day}: {count} values",
        body,
        indicatorId=config.indicator,
        date=day,
        valueCount=count,
    )


class ClimatiqConfig(NodeConfig):
    query: str = Field(
        default="Passenger Car", validation_alias=AliasChoices("climatiqQuery", "searchQuery")
    )
    selected: Any = Field(default=None, validation_alias=AliasChoices("climatiqSelectedFactor"))
    factor_id: str | None = Field(
        default=None, validation_alias=AliasChoices("climatiqEmissionFactor")
    )
    legacy_factor: Any = Field(default=None, validation_alias=AliasChoices("climatiqFactor"))
    legacy_unit: str | None = Field(default=None, validation_alias=AliasChoices("climatiqUnit"))
    legacy_description: str | None = Field(
        default=None, validation_alias=AliasChoices("climatiqDescription")
    )
    data_version: str | None = Field(
        default=None, validation_alias=AliasChoices("climatiqDataVersion")
    )

    @field_validator("query", "factor_id", "data_version", mode="before")
    @classmethod
    def _text(cls, value: Any) -> Any:
        return str(value).strip() if isinstance(value, int | float | str) else value


def _number(value: Any, field: str) -> float | int:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return value
    try:
        return float(str(value).strip())
    except (TypeError, ValueError):
        raise NodeConfigError(f"{field} must be a number (got {value!r})") from None


def _stored_factor(config: ClimatiqConfig) -> dict[str, Any] | None:
    """The factor record stored in the config (selected search result first, then the legacy
    keys), or None when nothing is stored."""
    selected = config.selected
    if selected not in (None, "", {}):
        if not isinstance(selected, dict):
            raise NodeConfigError("climatiqSelectedFactor must be an object (a search result)")
        if selected.get("factor") in (None, ""):
            raise NodeConfigError("climatiqSelectedFactor has no 'factor' value")
        record = {
            "factor": _number(selected["factor"], "climatiqSelectedFactor.factor"),
            "unit": selected.get("unit"),
            "description": selected.get("description") or selected.get("name"),
            "query": config.query,
        }
        extra = {
            k: v for k, v in selected.items() if k not in record and not isinstance(v, dict | list)
        }
        return {**record, **extra}
    if config.legacy_factor not in (None, ""):
        return {
            "factor": _number(config.legacy_factor, "climatiqFactor"),
            "unit": config.legacy_unit,
            "description": config.legacy_description,
            "query": config.query,
        }
    return None


@node("climatiq", config=ClimatiqConfig, retries=2, timeout_s=60, network=True)
async def climatiq(config: ClimatiqConfig, data: Any, ctx: RunContext) -> Envelope:
    """The stored emission factor as `[record]` without network; else the v1 search results."""
    stored = _stored_factor(config)
    if stored is not None:
        label = stored.get("name") or stored.get("description") or stored.get("id") or "factor"
        return envelope(
            f"Climatiq: stored factor {label} = {stored['factor']} "
            f"{stored.get('unit') or ''}".rstrip(),
            [stored],
            mode="stored",
        )
    if not config.factor_id and not config.query:
        raise NodeConfigError("No Climatiq search configured (climatiqQuery)")
    key = _key(ctx.settings.CLIMATIQ_API_KEY, "CLIMATIQ_API_KEY", "Climatiq")
    version = config.data_version or ctx.settings.CLIMATIQ_DATA_VERSION
    params = {"id": config.factor_id} if config.factor_id else {"query": config.query}
    url = f"{ctx.settings.CLIMATIQ_BASE_URL.rstrip('/')}/data/v1/search"
    response = await send(
        ctx,
        "GET",
        url,
        label="Climatiq request",
        secret=key,
        params={**params, "data_version": version},
        headers={"Authorization": f"Bearer {key}", "Accept": "application/json"},
    )
    _check(
        response,
        "Climatiq",
        "CLIMATIQ_API_KEY",
        key,
        "Climatiq search endpoint not found; check CLIMATIQ_BASE_URL",
    )
    body = _json(response, "Climatiq")
    results = body.get("results") if isinstance(body, dict) else None
    if not isinstance(results, list):
        raise NodeExecutionError("Climatiq search answer has no 'results' list")
    what = f"id {config.factor_id!r}" if config.factor_id else repr(config.query)
    total = body.get("total_results", len(results))
    return envelope(
        f"Climatiq: {len(results)} of {total} emission factors for {what}",
        results,
        mode="search",
        query=config.query if not config.factor_id else None,
        factorId=config.factor_id,
        dataVersion=version,
        totalResults=total,
        currentPage=body.get("current_page"),
        lastPage=body.get("last_page"),
    )
