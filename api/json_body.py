"""JSON request bodies are refused (422 `{"detail"}`) as they are decoded when their text is not
valid Unicode: a lone surrogate (`"\\ud800"`) has no UTF-8 form, so it could be neither stored
nor sent on. Routers with a JSON body are built with `route_class=JsonBodyRoute`."""

import re
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import HTTPException, Request, Response
from fastapi.routing import APIRoute

_SURROGATE_ESCAPE = re.compile(rb"\\u[dD]([89abAB]|[c-fC-F])[0-9a-fA-F]{2}")
"""A `\\uD800`-`\\uDFFF` escape, the only source of a lone surrogate: UTF-8 cannot encode one
(and invalid UTF-8 fails decoding). The group is 8-b for a high surrogate, c-f for a low one."""

_Path = tuple[str | int, "_Path"] | None
"""Where a value sits, innermost first: `(key, path of its parent)`, built in O(1) per value."""


def lone_surrogate_at(raw: bytes, value: Any) -> str | None:
    """What is wrong with `value`, decoded from the JSON text `raw`, when a string or key in it
    holds a lone surrogate (naming where, as other validation errors do); else None. Costs one
    scan of `raw`; only a body that has one is walked (it is MAX_REQUEST_BYTES at most)."""
    if not _has_lone_surrogate_escape(raw):
        return None
    stack: list[tuple[Any, _Path]] = [(value, None)]
    while stack:
        item, path = stack.pop()
        if isinstance(item, str):
            if not _encodable(item):
                return _detail(path, "text")
        elif isinstance(item, dict):
            if not all(map(_encodable, item)):
                return _detail(path, "a key")
            stack.extend((child, (key, path)) for key, child in reversed(item.items()))
        elif isinstance(item, list):
            stack.extend((item[i], (i, path)) for i in range(len(item) - 1, -1, -1))
    return None


def _has_lone_surrogate_escape(raw: bytes) -> bool:
    """Whether JSON decoding of `raw` leaves a surrogate escape unpaired: a high one not followed
    at once by a low one, or a low one not right after a high one. Valid pairs (`\\ud83d\\ude00`,
    an escaped emoji, as Python's `json.dumps` sends it) cost only this scan."""
    high_end = None  # where the last high surrogate escape ended, until its low one comes
    for match in _SURROGATE_ESCAPE.finditer(raw):
        start = before = match.start()
        while before and raw[before - 1] == 0x5C:
            before -= 1
        if (start - before) % 2:
            continue  # the backslash is an escaped one, followed by the letter u
        if high_end is not None:
            if start != high_end or match[1] not in b"cdefCDEF":
                return True
            high_end = None
        elif match[1] in b"89abAB":
            high_end = match.end()
        else:
            return True
    return high_end is not None


def _encodable(text: str) -> bool:
    if text.isascii():
        return True
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def _detail(path: _Path, what: str) -> str:
    keys: list[str] = []
    while path is not None:
        keys.append(str(path[0]))
        path = path[1]
    message = f"{what} is not valid Unicode (a lone surrogate)"
    return f"{'.'.join(reversed(keys))}: {message}" if keys else message


class _CheckedRequest(Request):
    async def json(self) -> Any:
        value = await super().json()
        problem = lone_surrogate_at(await self.body(), value)
        if problem is not None:
            # FastAPI answers the HTTPException it meets while decoding, and only that
            raise HTTPException(422, problem)
        return value


class JsonBodyRoute(APIRoute):
    """An `APIRoute` whose JSON body is checked for lone surrogates as FastAPI decodes it."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        if self.body_field is None:
            return handler

        async def checked(request: Request) -> Response:
            return await handler(_CheckedRequest(request.scope, request.receive))

        return checked
