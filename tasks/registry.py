"""Node-type registry: `@node(...)` turns one async function + its config model into a node type."""

import functools
import typing
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from pydantic import AliasChoices, BaseModel, ConfigDict, SecretStr, model_validator

from errors import WorkflowError
from models import Gather, NodeRules, RootInput, Route

JSON = Any
Envelope = dict[str, Any]


class NodeConfig(BaseModel):
    """Base of every node config model.

    Unknown keys are ignored (the editor keeps stale keys). A field declared with
    `validation_alias=AliasChoices(a, b, c)` takes the first of those keys whose value is
    neither missing, null nor "" — the contract's "editor key first, then aliases" rule.
    """

    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    @model_validator(mode="before")
    @classmethod
    def _first_non_empty_alias(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        data = dict(data)
        for name, field in cls.model_fields.items():
            alias = field.validation_alias
            if not isinstance(alias, AliasChoices):
                continue
            keys = [c for c in alias.choices if isinstance(c, str)]
            chosen = next((k for k in keys if data.get(k) not in (None, "")), None)
            for key in keys:
                if key != chosen:
                    data.pop(key, None)
            if chosen is not None and chosen != name:
                data.pop(name, None)
        return data


@functools.cache
def secret_keys(config: type[BaseModel]) -> tuple[str, ...]:
    """The config keys (field names and every alias) of the fields `config` declares as
    `SecretStr`: a node type's passwords and tokens are declared by their type, once."""
    keys: list[str] = []
    for name, field in config.model_fields.items():
        annotation = field.annotation
        if annotation is not SecretStr and SecretStr not in typing.get_args(annotation):
            continue
        keys.append(name)
        alias = field.validation_alias
        if isinstance(alias, AliasChoices):
            keys += [c for c in alias.choices if isinstance(c, str)]
        elif isinstance(alias, str):
            keys.append(alias)
    return tuple(keys)


def secret_values(config: type[BaseModel], raw: dict[str, Any] | None) -> list[str]:
    """The non-empty values `raw` (a node's config, or settings) gives to `config`'s secrets."""
    return [str(v) for k in secret_keys(config) if (v := (raw or {}).get(k)) not in (None, "")]


class DuplicateNodeType(WorkflowError):
    """A node type was registered twice."""


class UnknownNodeType(WorkflowError):
    """No handler is registered for this node type."""


Handler = Callable[[Any, JSON, Any], Awaitable[Envelope]]
ConfigModel = type[NodeConfig]


@dataclass(frozen=True)
class NodeSpec:
    """What the engine needs to know about one node type."""

    type: str
    handler: Handler
    config: ConfigModel
    retries: int = 0
    timeout_s: float | None = None
    network: bool = False
    """Network-bound: retried, and run as its own Prefect task in prefect mode."""
    rules: NodeRules = NodeRules()
    """Its routing and input rules in the graph (condition, join, splitColumns, webhook...)."""


_REGISTRY: dict[str, NodeSpec] = {}


def node(
    type_: str,
    *,
    config: type[NodeConfig],
    retries: int = 0,
    timeout_s: float | None = None,
    network: bool = False,
    route: Route | None = None,
    gather: Gather | None = None,
    root_input: RootInput | None = None,
    runs_unconnected: bool = True,
) -> Callable[[Handler], Handler]:
    """Register `fn` as the handler of node type `type_` (its wire name). `route`, `gather`,
    `root_input` and `runs_unconnected` declare how the type deviates from the common graph
    rules (see `models.NodeRules`)."""
    rules = NodeRules(route, gather, root_input, runs_unconnected)

    def register(fn: Handler) -> Handler:
        if type_ in _REGISTRY:
            raise DuplicateNodeType(f"Node type {type_!r} is registered twice")
        _REGISTRY[type_] = NodeSpec(type_, fn, config, retries, timeout_s, network, rules)
        return fn

    return register


def get_spec(type_: str) -> NodeSpec:
    try:
        return _REGISTRY[type_]
    except KeyError:
        raise UnknownNodeType(f"No handler found for node type: {type_}") from None


def rules_of(type_: str) -> NodeRules:
    """The graph rules of a node type; the common ones for an unknown type (it fails when run)."""
    spec = _REGISTRY.get(type_)
    return spec.rules if spec is not None else _COMMON_RULES


_COMMON_RULES = NodeRules()


def node_types() -> list[str]:
    return sorted(_REGISTRY)


def envelope(message: str, output: JSON, **extras: Any) -> Envelope:
    """The handler envelope: `{success, message, outputData, ...extras}`."""
    return {"success": True, "message": message, "outputData": output, **extras}
