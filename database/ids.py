"""Ids the store hands out: execution ids and time-ordered row ids."""

import itertools
import secrets
import time

_log_ids = itertools.count()


def new_execution_id() -> str:
    return secrets.token_hex(8)


def new_log_id() -> str:
    """16 hex chars sorting in creation order within a process (tie-break for equal timestamps)."""
    return f"{(time.time_ns() >> 12) & 0xFFFFFFFFFFFF:012x}{next(_log_ids) & 0xFFFF:04x}"


def new_row_id() -> str:
    """A random 16 hex char id (properties, record values)."""
    return secrets.token_hex(8)
