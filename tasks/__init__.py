"""Node handlers. Importing this package registers every node type (one module per family)."""

from tasks import basic, http_request, inputs, llm, logic, transform
from tasks.registry import get_spec, node_types

__all__ = ["basic", "get_spec", "http_request", "inputs", "llm", "logic", "node_types",
           "transform"]
