"""Operator tools of the kind a shop or a restaurant line would register, for the tool
benchmark (``python -m loadtest.tool_accuracy --tools demo``) and as an example of
``VOICEFORGE_TOOL_MODULES`` (docs/tools.md). They answer from fixed tables: the
benchmark measures the model's calls, not a database."""

from __future__ import annotations

from pipeline.tools import tool

_ORDERS = {"1234": "shipped yesterday, arriving Thursday", "5678": "being packed"}


@tool(timeout_s=2.0)
async def order_status(order_number: str) -> str:
    """Where a caller's order is. Only when the caller asks about an order and says its
    number."""
    digits = "".join(ch for ch in order_number if ch.isdigit())
    status = _ORDERS.get(digits)
    if status is None:
        return f"No order numbered {digits or order_number}."
    return f"Order {digits}: {status}."


@tool(timeout_s=2.0, on_interrupt="finish")
async def book_table(day: str, people: int) -> str:
    """Book a table at the restaurant. Only when the caller asks to book or reserve a
    table."""
    if not 1 <= people <= 12:
        raise ValueError("tables seat one to twelve people")
    return f"Booked a table for {people} on {day}."
