"""excelInput handler (contract §4.13, fixture 02)."""

from typing import Any

import pytest

from errors import NodeConfigError
from tasks import get_spec
from tests.conftest import CallNode

ROWS = [{"customer_id": "C1", "name": "Acme"}, {"customer_id": "C2", "name": "Globex"}]


@pytest.mark.parametrize(
    ("config", "rows"),
    [
        (
            {"fileName": "customers.xlsx", "parsedData": ROWS, "rowCount": 250, "useGCS": False},
            ROWS,
        ),
        ({"parsedData": []}, []),
        ({"parsedData": [{"a": "1"}], "headers": ["a"], "futureKey": "kept"}, [{"a": "1"}]),
    ],
)
async def test_excel_input_inline_rows(
    call_node: CallNode, config: dict[str, Any], rows: list[Any]
) -> None:
    result = await call_node("excelInput", config, {"ignored": True})
    assert result["outputData"] == rows
    assert result["rowCount"] == len(rows)
    assert result["source"] == "inline"


@pytest.mark.parametrize("config", [{}, {"fileName": "x.csv"}, {"parsedData": None}])
async def test_excel_input_without_data_fails(call_node: CallNode, config: dict[str, Any]) -> None:
    with pytest.raises(NodeConfigError) as info:
        await call_node("excelInput", config)
    assert str(info.value) == "No data configured for Excel/CSV node. Please upload a file."


def test_excel_input_config_keeps_unknown_keys() -> None:
    config = get_spec("excelInput").config.model_validate({"previewData": [], "useGCS": False})
    assert config.model_extra == {"previewData": [], "useGCS": False}


def test_excel_input_is_not_retried() -> None:
    spec = get_spec("excelInput")
    assert (spec.retries, spec.network) == (0, False)
