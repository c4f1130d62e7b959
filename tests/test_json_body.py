"""`api/json_body.py`: lone surrogates in JSON bodies, found from the raw text and named."""

import json
import random
from typing import Any

import httpx
import pytest
from fastapi import APIRouter, FastAPI
from fastapi.routing import APIRoute

from api.json_body import JsonBodyRoute, lone_surrogate_at
from api.routes import ROUTERS

TEXT = "text is not valid Unicode (a lone surrogate)"
KEY = "a key is not valid Unicode (a lone surrogate)"


def check(raw: str) -> str | None:
    return lone_surrogate_at(raw.encode(), json.loads(raw))


@pytest.mark.parametrize(
    ("raw", "detail"),
    [
        ('"\\ud800"', TEXT),
        ('["a", "\\udfff"]', f"1: {TEXT}"),
        ('{"a": {"b": ["x", {"c": "\\uDBFFz"}]}}', f"a.b.1.c: {TEXT}"),
        ('{"a": [{"ok": 1, "\\ud800": 2}]}', f"a.0: {KEY}"),
        ('{"\\udc00": 1}', KEY),
        ('{"a": "\\ude00\\ud83d"}', f"a: {TEXT}"),  # a pair the wrong way round
        ('{"a": "\\ud83d\\ud83d\\ude00"}', f"a: {TEXT}"),  # a high one, then a pair
        ('{"a": "\\ud83d\\\\\\ude00"}', f"a: {TEXT}"),  # an escaped backslash between
        ('{"a": "\\\\ud83d\\ude00"}', f"a: {TEXT}"),  # the first "escape" is a backslash + text
        ('{"a": "\\ud83d", "b": "\\ude00"}', f"a: {TEXT}"),
    ],
)
def test_lone_surrogates_are_named_where_they_are(raw: str, detail: str) -> None:
    assert check(raw) == detail


@pytest.mark.parametrize(
    "raw",
    [
        '{"a": "\\ud83d\\ude00", "\\uD83D\\uDE00": ["\\udbff\\udfff"]}',
        '{"a": "\\\\ud800"}',  # a backslash, then the text "ud800"
        '{"a": "\\u005cud800"}',  # the same, the backslash escaped as \\u005c
        '{"a": "\\u00e9 😀 \\\\\\\\"}',
        "[1, 2.5, null, true]",
    ],
)
def test_valid_text_and_pairs_pass(raw: str) -> None:
    assert check(raw) is None


def test_the_check_agrees_with_decoding_on_generated_text() -> None:
    """Strings of escapes and backslashes in every order, against what decoding gives."""
    parts = ["\\ud83d", "\\ude00", "\\uDBFF", "\\uDC00", "\\\\", "\\", "\\u005c", "u", "d800", "😀"]
    rng = random.Random(7)
    found = {False: 0, True: 0}
    for _ in range(20_000):
        text = "".join(rng.choice(parts) for _ in range(rng.randint(1, 6)))
        raw = '{"k": "' + text + '"}'
        try:
            value = json.loads(raw)
        except ValueError:
            continue  # a lone backslash
        try:
            value["k"].encode()
            lone = False
        except UnicodeEncodeError:
            lone = True
        assert (check(raw) is not None) == lone, raw
        found[lone] += 1
    assert min(found.values()) > 1_000


def test_every_json_body_route_checks_for_lone_surrogates() -> None:
    routes = [r for router in ROUTERS for r in router.routes if isinstance(r, APIRoute)]
    with_body = [r for r in routes if r.body_field is not None]
    assert with_body and all(isinstance(r, JsonBodyRoute) for r in with_body), [
        r.path for r in with_body if not isinstance(r, JsonBodyRoute)
    ]


async def test_a_route_with_any_json_body_refuses_lone_surrogates() -> None:
    """Not only the models of `api/schemas.py`: a plain `dict` body is checked as well."""
    router = APIRouter(route_class=JsonBodyRoute)

    @router.post("/echo")
    async def echo(body: dict[str, Any]) -> dict[str, Any]:
        return body

    app = FastAPI()
    app.include_router(router)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://t"
    ) as client:
        headers = {"content-type": "application/json"}
        bad = await client.post("/echo", content='{"x": ["\\ud800"]}', headers=headers)
        assert bad.status_code == 422
        assert bad.json() == {"detail": f"x.0: {TEXT}"}
        good = await client.post("/echo", content='{"x": "\\ud83d\\ude00"}', headers=headers)
        assert good.status_code == 200 and good.json() == {"x": "😀"}
