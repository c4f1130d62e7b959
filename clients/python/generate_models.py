"""Writes `wos_client/models.py` from the service's OpenAPI document: one pydantic model per
schema of `components` (string enums become `Literal` aliases). Only the structure is rendered
(names, types, required keys, defaults), so `tests/test_client_python.py` can render the live
document again and compare it with the committed file.

    python clients/python/generate_models.py                    # the app of this checkout
    python clients/python/generate_models.py http://host:8000   # a running service
"""

import json
import keyword
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

HEADER = '''"""Every request and response body of the workflow service's API, generated from its
`/openapi.json` by `clients/python/generate_models.py` (do not edit by hand: run it again).
Attribute names are the wire names; keys this version does not know are kept (`extra`)."""

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class WosModel(BaseModel):
    """Base of every model: unknown keys are kept, so a newer service never breaks a client."""

    model_config = ConfigDict(extra="allow")
'''

OUTPUT = Path(__file__).resolve().parent / "wos_client" / "models.py"
JSON_TYPES = {"string": "str", "integer": "int", "number": "float", "boolean": "bool"}


def annotation(schema: dict[str, Any]) -> str:
    """The Python type of a JSON schema (OpenAPI 3.1 / JSON Schema 2020-12 as FastAPI writes it)."""
    if "$ref" in schema:
        return str(schema["$ref"]).rsplit("/", 1)[1]
    if "const" in schema:
        return f"Literal[{schema['const']!r}]"
    if "enum" in schema:
        return "Literal[" + ", ".join(repr(v) for v in schema["enum"]) + "]"
    for combinator in ("anyOf", "oneOf"):
        if combinator in schema:
            return union([annotation(s) for s in schema[combinator]])
    kind = schema.get("type")
    if isinstance(kind, list):
        return union([annotation({**schema, "type": k}) for k in kind])
    if kind == "null":
        return "None"
    if kind == "array":
        return f"list[{annotation(schema.get('items', {}))}]"
    if kind == "object":
        extra = schema.get("additionalProperties")
        value = annotation(extra) if isinstance(extra, dict) else "Any"
        return f"dict[str, {value}]"
    return JSON_TYPES.get(str(kind), "Any")


def union(members: list[str]) -> str:
    unique = list(dict.fromkeys(members))
    if "Any" in unique:
        return "Any"
    if "None" in unique:  # None last, as people write it
        unique = [m for m in unique if m != "None"] + ["None"]
    return " | ".join(unique)


def field(name: str, schema: dict[str, Any], required: bool) -> str:
    """One field line; a keyword name gets a trailing underscore and the wire name as alias."""
    python_name = name + "_" if keyword.iskeyword(name) else name
    kind = annotation(schema)
    options = [f"alias={name!r}"] if python_name != name else []
    if not required:
        if kind != "Any" and not kind.endswith("None"):
            kind += " | None"
        default = schema.get("default")
        if isinstance(default, list | dict):
            options.insert(0, f"default_factory=lambda: {default!r}")
        else:
            options.insert(0, f"default={default!r}")
    if not options:
        return f"    {python_name}: {kind}"
    if options == [f"default={schema.get('default')!r}"]:
        return f"    {python_name}: {kind} = {schema.get('default')!r}"
    return f"    {python_name}: {kind} = Field({', '.join(options)})"


def references(schema: Any) -> set[str]:
    if isinstance(schema, dict):
        found = {schema["$ref"].rsplit("/", 1)[1]} if "$ref" in schema else set()
        for value in schema.values():
            found |= references(value)
        return found
    if isinstance(schema, list):
        return set().union(*(references(v) for v in schema)) if schema else set()
    return set()


def ordered(schemas: dict[str, Any]) -> list[str]:
    """Names with every schema after those it refers to (alphabetical otherwise)."""
    done: list[str] = []
    pending = sorted(schemas)
    while pending:
        ready = [n for n in pending if references(schemas[n]) - {n} <= set(done)]
        if not ready:  # a cycle: pydantic resolves string annotations later
            ready = pending[:1]
        done.append(ready[0])
        pending.remove(ready[0])
    return done


def render_schema(name: str, schema: dict[str, Any]) -> str:
    if schema.get("type") != "object" and "properties" not in schema:
        return f"{name} = {annotation(schema)}\n"
    required = set(schema.get("required", []))
    lines = [f"class {name}(WosModel):"]
    properties = schema.get("properties", {})
    lines += [field(key, value, key in required) for key, value in properties.items()]
    if not properties:
        lines.append("    pass")
    return "\n".join(lines) + "\n"


def render(spec: dict[str, Any]) -> str:
    """The text of `models.py` for the OpenAPI document `spec`."""
    schemas: dict[str, Any] = spec.get("components", {}).get("schemas", {})
    blocks = [render_schema(name, schemas[name]) for name in ordered(schemas)]
    names = ", ".join(repr(n) for n in ["WosModel", *sorted(schemas)])
    return formatted(HEADER + "\n\n" + "\n\n".join(blocks) + f"\n\n__all__ = [{names}]\n")


def formatted(source: str) -> str:
    """`source` as `ruff format` writes it (the repository's formatter, from the dev venv)."""
    ruff = Path(sys.executable).with_name("ruff")
    command = str(ruff) if ruff.exists() else shutil.which("ruff")
    if command is None:
        raise RuntimeError("ruff is needed to format the generated models (pip install ruff)")
    done = subprocess.run(
        [command, "format", "--stdin-filename", str(OUTPUT), "-"],
        input=source,
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout


def load(source: str | None) -> dict[str, Any]:
    if source is None:  # this checkout's app, without starting it
        sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
        import api_service

        document: dict[str, Any] = api_service.app.openapi()
        return document
    import httpx

    response = httpx.get(source.rstrip("/") + "/openapi.json", timeout=30, trust_env=False)
    response.raise_for_status()
    fetched: dict[str, Any] = response.json()
    return fetched


if __name__ == "__main__":
    OUTPUT.write_text(render(load(sys.argv[1] if len(sys.argv) > 1 else None)))
    json.dump({"written": str(OUTPUT)}, sys.stdout)
    sys.stdout.write("\n")
