"""esios and climatiq (contract §4.19, §4.20) against local HTTP servers speaking those APIs:
real sockets, the real shared httpx client, the APIs' success, error and rate-limit answers."""

import json
import logging
import threading
from collections.abc import AsyncIterator, Iterator
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit
from zoneinfo import ZoneInfo

import pytest

from errors import NodeConfigError, NodeExecutionError
from models import NodeDef
from tasks.context import RunContext, open_resources
from tasks.external_apis import ClimatiqConfig, EsiosConfig, climatiq, esios
from tasks.run_node import run_with_retries
from tests.conftest import make_settings
from tests.e2e import free_port

ESIOS_KEY = "esios-secret-key-4f1d2c"
CLIMATIQ_KEY = "climatiq-secret-key-9a8b7c"

Reply = tuple[int, dict[str, str], Any]


def reply(status: int, body: Any = None, **headers: str) -> Reply:
    return status, headers, body


class ApiServer:
    """A local HTTP server that answers each path from a script of replies (the last one
    repeats) and records every request: method, path, raw query, parsed query, headers."""

    def __init__(self) -> None:
        self.script: dict[str, list[Reply]] = {}
        self.requests: list[dict[str, Any]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                parts = urlsplit(self.path)
                outer.requests.append(
                    {
                        "method": self.command,
                        "path": parts.path,
                        "query": parts.query,
                        "params": parse_qs(parts.query),
                        "headers": {k.lower(): v for k, v in self.headers.items()},
                    }
                )
                replies = outer.script.get(parts.path) or [reply(404, "<h1>Not Found</h1>")]
                status, headers, body = replies.pop(0) if len(replies) > 1 else replies[0]
                if isinstance(body, str):
                    data, kind = body.encode(), "text/html; charset=utf-8"
                else:
                    data, kind = json.dumps(body).encode(), "application/json; charset=utf-8"
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(data)))
                for name, value in headers.items():
                    self.send_header(name.replace("_", "-"), value)
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()

    def answer(self, path: str, *replies: Reply) -> None:
        self.script[path] = list(replies)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def server() -> Iterator[ApiServer]:
    api = ApiServer()
    yield api
    api.close()


@pytest.fixture
async def ctx_for(server: ApiServer) -> AsyncIterator[Any]:
    """`ctx_for(node_type, **settings)`: a RunContext on the real shared client whose API base
    URLs point at the local server and whose keys are set (override with None to unset)."""
    opened = []

    def make(node_type: str, node_id: str = "n1", **settings: Any) -> RunContext:
        values = {
            "ESIOS_BASE_URL": server.url,
            "ESIOS_API_KEY": ESIOS_KEY,
            "CLIMATIQ_BASE_URL": server.url,
            "CLIMATIQ_API_KEY": CLIMATIQ_KEY,
            **settings,
        }
        resources = open_resources(make_settings(**values))
        opened.append(resources)
        return RunContext(
            execution_id="exec_test",
            workflow_id="wf_test",
            organization_id="org_test",
            inputs={},
            node_id=node_id,
            node_type=node_type,
            node_label=node_type,
            resources=resources,
        )

    yield make
    for resources in opened:
        await resources.aclose()


def indicator_body(indicator_id: int = 1001, values: int = 24) -> dict[str, Any]:
    """The shape of `GET /indicators/{id}`: one indicator with its values of the day."""
    return {
        "indicator": {
            "name": "Término de facturación de energía activa del PVPC 2.0TD",
            "short_name": "PVPC T. 2.0TD",
            "id": indicator_id,
            "composited": False,
            "step_type": "linear",
            "disaggregated": True,
            "magnitud": [{"name": "Precio", "id": 23}],
            "tiempo": [{"name": "Hora", "id": 4}],
            "geos": [{"geo_id": 8741, "geo_name": "Península"}],
            "values_updated_at": "2024-03-04T20:16:38.000+01:00",
            "values": [
                {
                    "value": 120.5 + h,
                    "datetime": f"2024-03-05T{h:02d}:00:00.000+01:00",
                    "datetime_utc": f"2024-03-04T{(h + 23) % 24:02d}:00:00Z",
                    "tz_time": f"2024-03-04T{(h + 23) % 24:02d}:00:00.000Z",
                    "geo_id": 8741,
                    "geo_name": "Península",
                }
                for h in range(values)
            ],
        }
    }


CAR_FACTOR = {
    "activity_id": "passenger_vehicle-vehicle_type_car-fuel_source_na-engine_size_na-"
    "vehicle_age_na-vehicle_weight_na",
    "id": "a1b2c3d4-0000-4000-8000-000000000001",
    "name": "Passenger car",
    "category": "Vehicles",
    "sector": "Transport",
    "source": "BEIS",
    "source_dataset": "UK Government GHG Conversion Factors for Company Reporting",
    "year": 2023,
    "year_released": 2023,
    "region": "GB",
    "region_name": "United Kingdom",
    "description": "Average car, unknown fuel",
    "unit_type": "Distance",
    "unit": "kg/km",
    "source_lca_activity": "fuel_combustion",
    "data_quality_flags": [],
    "access_type": "public",
    "supported_calculation_methods": ["ar5"],
    "factor": 0.17048,
    "factor_calculation_method": "ar5",
    "factor_calculation_origin": "source",
    "constituent_gases": {"co2e_total": 0.17048, "co2": 0.16885, "ch4": 0.00002, "n2o": 0.0016},
}


def search_body(results: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """The shape of `GET /data/v1/search`."""
    results = [CAR_FACTOR] if results is None else results
    return {
        "current_page": 1,
        "last_page": 4,
        "total_results": 77,
        "results": results,
        "possible_filters": {
            "year": [2023, 2022],
            "source": [{"source": "BEIS", "datasets": ["UK Government GHG Conversion Factors"]}],
            "region": [{"id": "GB", "name": "United Kingdom"}],
        },
    }


def climatiq_error(error: str, code: str, message: str) -> dict[str, str]:
    return {"error": error, "error_code": code, "message": message}


# --- esios -----------------------------------------------------------------------------------


async def test_esios_requests_one_day_of_the_indicator(server: ApiServer, ctx_for: Any) -> None:
    body = indicator_body(600)
    server.answer("/indicators/600", reply(200, body))
    config = EsiosConfig.model_validate({"esiosArchiveId": "600", "esiosDate": "2024-03-05"})
    result = await esios(config, None, ctx_for("esios"))
    assert result["outputData"] == body
    assert (result["indicatorId"], result["date"], result["valueCount"]) == (
        "600",
        "2024-03-05",
        24,
    )
    assert result["message"] == "ESIOS indicator 600 (PVPC T. 2.0TD) on 2024-03-05: 24 values"
    [request] = server.requests
    assert (request["method"], request["path"]) == ("GET", "/indicators/600")
    assert request["params"] == {
        "start_date": ["2024-03-05T00:00"],
        "end_date": ["2024-03-05T23:59"],
    }
    assert request["params"] == {
        "start_date": ["2024-03-05T00:00"],
        "end_date": ["2024-03-05T23:59"],
    }
    headers = request["headers"]
    assert headers["accept"] == "application/json; application/vnd.esios-api-v1+json"
    assert headers["content-type"] == "application/json"
    assert headers["x-api-key"] == ESIOS_KEY
    assert "authorization" not in headers


@pytest.mark.parametrize(
    ("config", "path"),
    [
        ({}, "/indicators/1001"),
        ({"indicator": "1739"}, "/indicators/1739"),
        ({"indicator": 10211}, "/indicators/10211"),
        ({"esiosArchiveId": "", "indicator": "600"}, "/indicators/600"),
        ({"esiosArchiveId": " 1001 ", "indicator": "600"}, "/indicators/1001"),
    ],
)
async def test_esios_indicator_id_and_default_date(
    server: ApiServer, ctx_for: Any, config: dict[str, Any], path: str
) -> None:
    server.answer(path, reply(200, indicator_body(values=0)))
    result = await esios(EsiosConfig.model_validate(config), None, ctx_for("esios"))
    assert result["valueCount"] == 0
    [request] = server.requests
    assert request["path"] == path
    today = datetime.now(ZoneInfo("Europe/Madrid")).date().isoformat()
    assert request["params"]["start_date"] == [f"{today}T00:00"]


async def test_esios_base_url_trailing_slash(server: ApiServer, ctx_for: Any) -> None:
    server.answer("/indicators/1001", reply(200, indicator_body()))
    ctx = ctx_for("esios", ESIOS_BASE_URL=server.url + "/")
    await esios(EsiosConfig.model_validate({"esiosDate": "2024-03-05"}), None, ctx)
    assert [r["path"] for r in server.requests] == ["/indicators/1001"]


@pytest.mark.parametrize(
    ("config", "field"),
    [
        ({"esiosDate": "2024-13-01"}, "esiosDate"),
        ({"esiosDate": "05/03/2024"}, "esiosDate"),
        ({"esiosDate": "2024-3-5"}, "esiosDate"),
        ({"esiosDate": "2024-02-30"}, "esiosDate"),
        ({"esiosDate": "2024-03-05T00:00"}, "esiosDate"),
        ({"esiosArchiveId": "PVPC"}, "esiosArchiveId"),
        ({"esiosArchiveId": "1/../2"}, "esiosArchiveId"),
        ({"indicator": "1001?x=1"}, "esiosArchiveId"),
    ],
)
async def test_esios_bad_config_names_the_field(
    server: ApiServer, ctx_for: Any, config: dict[str, Any], field: str
) -> None:
    with pytest.raises(NodeConfigError, match=field):
        await esios(EsiosConfig.model_validate(config), None, ctx_for("esios"))
    assert server.requests == []


async def test_esios_without_key_is_a_config_error(server: ApiServer, ctx_for: Any) -> None:
    with pytest.raises(NodeConfigError, match="ESIOS_API_KEY"):
        await esios(EsiosConfig(), None, ctx_for("esios", ESIOS_API_KEY=None))
    assert server.requests == []


FORBIDDEN_HTML = (
    "<!DOCTYPE html><html><head><title>403 Forbidden</title></head><body>"
    "<h1>403 Forbidden</h1><p>Request blocked.</p></body></html>"
)


@pytest.mark.parametrize(
    ("answer", "requests", "text", "retryable"),
    [
        (
            reply(401, {"message": "HTTP Token: Access denied."}),
            1,
            "ESIOS rejected the API key (HTTP 401); check ESIOS_API_KEY: "
            "HTTP Token: Access denied.",
            False,
        ),
        (
            reply(403, FORBIDDEN_HTML),
            1,
            "ESIOS rejected the API key (HTTP 403); check ESIOS_API_KEY",
            False,
        ),
        (reply(403, {"message": "Forbidden"}), 1, "HTTP 403", False),
        (
            reply(404, {"message": "Couldn't find Indicator with 'id'=99999"}),
            1,
            "ESIOS indicator 99999 not found (HTTP 404): Couldn't find Indicator",
            False,
        ),
        (
            reply(429, {"message": "Too Many Requests"}, Retry_After="1"),
            3,
            "ESIOS rate limit exceeded (HTTP 429); retry after 1 s: Too Many Requests",
            True,
        ),
        (
            reply(500, {"message": "Internal Server Error"}),
            3,
            "ESIOS server error (HTTP 500)",
            True,
        ),
        (
            reply(502, "<html><body><h1>502 Bad Gateway</h1></body></html>"),
            3,
            "ESIOS server error (HTTP 502)",
            True,
        ),
        (reply(200, "<html>maintenance</html>"), 1, "not JSON", False),
    ],
)
async def test_esios_error_answers(
    server: ApiServer,
    ctx_for: Any,
    caplog: pytest.LogCaptureFixture,
    answer: Reply,
    requests: int,
    text: str,
    retryable: bool,
) -> None:
    caplog.set_level(logging.DEBUG)
    server.answer("/indicators/99999", answer)
    node = NodeDef(
        id="n1",
        type="esios",
        config={"esiosArchiveId": "99999", "esiosDate": "2024-03-05", "retryDelayMs": 0},
    )
    with pytest.raises(NodeExecutionError) as caught:
        await run_with_retries(node, None, ctx_for("esios"))
    assert text in str(caught.value)
    assert caught.value.retryable is retryable
    assert caught.value.attempts == requests
    assert len(server.requests) == requests
    assert "<" not in str(caught.value)
    assert ESIOS_KEY not in str(caught.value)
    assert ESIOS_KEY not in caplog.text


async def test_esios_retries_a_server_error_then_succeeds(server: ApiServer, ctx_for: Any) -> None:
    body = indicator_body()
    server.answer(
        "/indicators/1001",
        reply(503, {"message": "Service Unavailable"}),
        reply(429, {"message": "Too Many Requests"}, Retry_After="0"),
        reply(200, body),
    )
    node = NodeDef(id="n1", type="esios", config={"esiosDate": "2024-03-05", "retryDelayMs": 0})
    result = await run_with_retries(node, None, ctx_for("esios"))
    assert result["outputData"] == body
    assert result["attempts"] == 3
    assert len(server.requests) == 3


async def test_esios_unreachable_server_is_retried_three_times_at_most(ctx_for: Any) -> None:
    ctx = ctx_for("esios", ESIOS_BASE_URL=f"http://127.0.0.1:{free_port()}")
    node = NodeDef(id="n1", type="esios", config={"esiosDate": "2024-03-05", "retryDelayMs": 0})
    with pytest.raises(NodeExecutionError, match="ESIOS request failed: ConnectError") as caught:
        await run_with_retries(node, None, ctx)
    assert caught.value.retryable is True
    assert caught.value.attempts == 3


# --- climatiq --------------------------------------------------------------------------------


async def test_climatiq_searches_the_v1_endpoint(server: ApiServer, ctx_for: Any) -> None:
    server.answer("/data/v1/search", reply(200, search_body()))
    config = ClimatiqConfig.model_validate({"climatiqQuery": "Passenger Car"})
    result = await climatiq(config, None, ctx_for("climatiq"))
    assert result["outputData"] == [CAR_FACTOR]
    assert {
        k: result[k]
        for k in ("mode", "query", "dataVersion", "totalResults", "currentPage", "lastPage")
    } == {
        "mode": "search",
        "query": "Passenger Car",
        "dataVersion": "^21",
        "totalResults": 77,
        "currentPage": 1,
        "lastPage": 4,
    }
    assert result["message"] == "Climatiq: 1 of 77 emission factors for 'Passenger Car'"
    [request] = server.requests
    assert (request["method"], request["path"]) == ("GET", "/data/v1/search")
    assert request["query"] == "query=Passenger+Car&data_version=%5E21"
    assert request["headers"]["authorization"] == f"Bearer {CLIMATIQ_KEY}"


@pytest.mark.parametrize(
    ("config", "settings", "params"),
    [
        ({}, {}, {"query": ["Passenger Car"], "data_version": ["^21"]}),
        (
            {"searchQuery": "diesel & petrol"},
            {},
            {"query": ["diesel & petrol"], "data_version": ["^21"]},
        ),
        (
            {"climatiqQuery": "electricity", "searchQuery": "ignored"},
            {"CLIMATIQ_DATA_VERSION": "^29"},
            {"query": ["electricity"], "data_version": ["^29"]},
        ),
        (
            {"climatiqQuery": "steel", "climatiqDataVersion": "27"},
            {"CLIMATIQ_DATA_VERSION": "^29"},
            {"query": ["steel"], "data_version": ["27"]},
        ),
        (
            {"climatiqEmissionFactor": CAR_FACTOR["id"]},
            {},
            {"id": [CAR_FACTOR["id"]], "data_version": ["^21"]},
        ),
    ],
)
async def test_climatiq_search_parameters(
    server: ApiServer,
    ctx_for: Any,
    config: dict[str, Any],
    settings: dict[str, Any],
    params: dict[str, list[str]],
) -> None:
    server.answer("/data/v1/search", reply(200, search_body([])))
    result = await climatiq(
        ClimatiqConfig.model_validate(config), None, ctx_for("climatiq", **settings)
    )
    assert result["outputData"] == []
    [request] = server.requests
    assert request["params"] == params


@pytest.mark.parametrize(
    ("config", "record"),
    [
        (
            {
                "climatiqQuery": "Passenger Car",
                "climatiqSelectedFactor": CAR_FACTOR,
                "climatiqEmissionFactor": CAR_FACTOR["id"],
            },
            {
                "factor": 0.17048,
                "unit": "kg/km",
                "description": "Average car, unknown fuel",
                "query": "Passenger Car",
                "activity_id": CAR_FACTOR["activity_id"],
                "id": CAR_FACTOR["id"],
                "name": "Passenger car",
                "category": "Vehicles",
                "sector": "Transport",
                "source": "BEIS",
                "source_dataset": "UK Government GHG Conversion Factors for Company Reporting",
                "year": 2023,
                "year_released": 2023,
                "region": "GB",
                "region_name": "United Kingdom",
                "unit_type": "Distance",
                "source_lca_activity": "fuel_combustion",
                "access_type": "public",
                "factor_calculation_method": "ar5",
                "factor_calculation_origin": "source",
            },
        ),
        (
            {
                "climatiqSelectedFactor": {
                    "id": "f1",
                    "name": "Grid electricity",
                    "factor": "0.233",
                    "unit": "kg/kWh",
                    "region": "ES",
                }
            },
            {
                "factor": 0.233,
                "unit": "kg/kWh",
                "description": "Grid electricity",
                "query": "Passenger Car",
                "id": "f1",
                "name": "Grid electricity",
                "region": "ES",
            },
        ),
        (
            {
                "climatiqFactor": 2.68,
                "climatiqUnit": "kg/L",
                "climatiqDescription": "Diesel",
                "climatiqQuery": "diesel",
            },
            {"factor": 2.68, "unit": "kg/L", "description": "Diesel", "query": "diesel"},
        ),
        (
            {"climatiqFactor": "0", "searchQuery": "nothing"},
            {"factor": 0.0, "unit": None, "description": None, "query": "nothing"},
        ),
    ],
)
async def test_climatiq_stored_factor_makes_no_request(
    server: ApiServer, ctx_for: Any, config: dict[str, Any], record: dict[str, Any]
) -> None:
    ctx = ctx_for("climatiq", CLIMATIQ_API_KEY=None)
    result = await climatiq(ClimatiqConfig.model_validate(config), None, ctx)
    assert result["outputData"] == [record]
    assert result["mode"] == "stored"
    assert result["message"].startswith("Climatiq: stored factor ")
    assert server.requests == []


@pytest.mark.parametrize(
    ("config", "field"),
    [
        ({"climatiqSelectedFactor": {"id": "f1", "unit": "kg"}}, "climatiqSelectedFactor"),
        ({"climatiqSelectedFactor": {"factor": "lots"}}, "climatiqSelectedFactor.factor"),
        ({"climatiqSelectedFactor": "f1"}, "climatiqSelectedFactor"),
        ({"climatiqFactor": "abc"}, "climatiqFactor"),
    ],
)
async def test_climatiq_bad_stored_factor_names_the_field(
    server: ApiServer, ctx_for: Any, config: dict[str, Any], field: str
) -> None:
    with pytest.raises(NodeConfigError, match=field):
        await climatiq(ClimatiqConfig.model_validate(config), None, ctx_for("climatiq"))
    assert server.requests == []


async def test_climatiq_search_without_key_is_a_config_error(
    server: ApiServer, ctx_for: Any
) -> None:
    with pytest.raises(NodeConfigError, match="CLIMATIQ_API_KEY"):
        await climatiq(ClimatiqConfig(), None, ctx_for("climatiq", CLIMATIQ_API_KEY=None))
    assert server.requests == []


@pytest.mark.parametrize(
    ("answer", "requests", "text", "retryable"),
    [
        (
            reply(
                400,
                climatiq_error(
                    "Bad Request",
                    "invalid_data_version",
                    "data_version '^99' is not a valid data version",
                ),
            ),
            1,
            "Climatiq request refused (HTTP 400): data_version '^99' is not a valid data version; "
            "Bad Request [invalid_data_version]",
            False,
        ),
        (
            reply(
                401,
                climatiq_error(
                    "Unauthorized", "invalid_auth", f"The API key '{CLIMATIQ_KEY}' is not valid"
                ),
            ),
            1,
            "Climatiq rejected the API key (HTTP 401); check CLIMATIQ_API_KEY: The API key '***' "
            "is not valid",
            False,
        ),
        (
            reply(403, climatiq_error("Forbidden", "forbidden", "Key lacks access to search")),
            1,
            "Climatiq rejected the API key (HTTP 403)",
            False,
        ),
        (
            reply(404, climatiq_error("Not Found", "not_found", "Unknown endpoint")),
            1,
            "Climatiq search endpoint not found; check CLIMATIQ_BASE_URL (HTTP 404)",
            False,
        ),
        (
            reply(
                429,
                climatiq_error(
                    "Too Many Requests", "rate_limit_exceeded", "You have exceeded your rate limit"
                ),
                Retry_After="2",
            ),
            3,
            "Climatiq rate limit exceeded (HTTP 429); retry after 2 s: You have exceeded",
            True,
        ),
        (
            reply(500, climatiq_error("Internal Server Error", "server_error", "Oops")),
            3,
            "Climatiq server error (HTTP 500): Oops",
            True,
        ),
        (
            reply(503, "<html>upstream unavailable</html>"),
            3,
            "Climatiq server error (HTTP 503)",
            True,
        ),
        (reply(200, {"unexpected": True}), 1, "no 'results' list", False),
    ],
)
async def test_climatiq_error_answers(
    server: ApiServer,
    ctx_for: Any,
    caplog: pytest.LogCaptureFixture,
    answer: Reply,
    requests: int,
    text: str,
    retryable: bool,
) -> None:
    caplog.set_level(logging.DEBUG)
    server.answer("/data/v1/search", answer)
    node = NodeDef(id="n1", type="climatiq", config={"climatiqQuery": "car", "retryDelayMs": 0})
    with pytest.raises(NodeExecutionError) as caught:
        await run_with_retries(node, None, ctx_for("climatiq"))
    assert text in str(caught.value)
    assert caught.value.retryable is retryable
    assert caught.value.attempts == requests
    assert len(server.requests) == requests
    assert CLIMATIQ_KEY not in str(caught.value)
    assert CLIMATIQ_KEY not in caplog.text


async def test_climatiq_retries_rate_limit_then_succeeds(server: ApiServer, ctx_for: Any) -> None:
    server.answer(
        "/data/v1/search",
        reply(
            429, climatiq_error("Too Many Requests", "rate_limit_exceeded", "slow"), Retry_After="0"
        ),
        reply(200, search_body()),
    )
    node = NodeDef(id="n1", type="climatiq", config={"retryDelayMs": 0})
    result = await run_with_retries(node, None, ctx_for("climatiq"))
    assert result["outputData"] == [CAR_FACTOR]
    assert result["attempts"] == 2
    assert len(server.requests) == 2


@pytest.mark.parametrize("key", ["~", "~^", "~^!"])
async def test_short_api_keys_are_redacted_from_errors(
    server: ApiServer, ctx_for: Any, key: str
) -> None:
    server.answer("/indicators/600", reply(401, {"message": f"Key {key} is not valid"}))
    server.answer("/data/v1/search", reply(401, {"message": f"Key {key} is not valid"}))
    day = {"esiosArchiveId": "600", "esiosDate": "2024-03-05"}
    with pytest.raises(NodeExecutionError) as info:
        await esios(EsiosConfig.model_validate(day), None, ctx_for("esios", ESIOS_API_KEY=key))
    assert str(info.value) == (
        "ESIOS rejected the API key (HTTP 401); check ESIOS_API_KEY: Key *** is not valid"
    )
    search = ClimatiqConfig.model_validate({"climatiqQuery": "car"})
    with pytest.raises(NodeExecutionError) as info:
        await climatiq(search, None, ctx_for("climatiq", CLIMATIQ_API_KEY=key))
    assert str(info.value) == (
        "Climatiq rejected the API key (HTTP 401); check CLIMATIQ_API_KEY: Key *** is not valid"
    )
