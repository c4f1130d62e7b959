"""Node handlers. Importing this package registers every node type (one module per family)."""

from tasks import (
    basic,
    external_apis,
    http_request,
    inputs,
    llm,
    logic,
    messaging,
    mysql_query,
    pdf,
    records,
    sms,
    transform,
    visualization,
)
from tasks.registry import get_spec, node_types

__all__ = [
    "basic",
    "external_apis",
    "get_spec",
    "http_request",
    "inputs",
    "llm",
    "logic",
    "messaging",
    "mysql_query",
    "node_types",
    "pdf",
    "records",
    "sms",
    "transform",
    "visualization",
]
