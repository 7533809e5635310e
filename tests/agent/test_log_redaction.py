"""No configured secret reaches a log line: not in a traceback, nor a JSON extra field."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator

import pytest

from agent.serving import configure_logging

SECRET = "s3cr3t-0123456789abcdef0123456789abcdef"


@pytest.fixture
def restore_logging() -> Iterator[None]:
    names = ("", "uvicorn", "uvicorn.error", "uvicorn.access")
    saved = {name: (logging.getLogger(name).handlers[:], logging.getLogger(name).level,
                    logging.getLogger(name).propagate) for name in names}
    yield
    for name, (handlers, level, propagate) in saved.items():
        logger = logging.getLogger(name)
        logger.handlers[:] = handlers
        logger.setLevel(level)
        logger.propagate = propagate


def _log_everywhere(logger: logging.Logger) -> None:
    try:
        raise ConnectionError(f"POST http://llm.internal/v1 with key {SECRET} failed")
    except ConnectionError:
        logger.exception("the LLM call failed")
    logger.warning("an extra field", extra={"url": f"http://user:{SECRET}@llm.internal",
                                            "nested": {"headers": [f"Bearer {SECRET}"]}})
    logger.info("a stack", stack_info=True, extra={"presented": SECRET})
    logger.info("in the message: %s", SECRET)


@pytest.mark.parametrize("log_format", ["json", "text"])
def test_secrets_are_redacted_from_tracebacks_and_extras(
    log_format: str, capsys: pytest.CaptureFixture[str], restore_logging: None
) -> None:
    configure_logging(log_format, [SECRET, None], logging.INFO)
    _log_everywhere(logging.getLogger("voiceforge.test"))
    output = capsys.readouterr().err
    assert SECRET not in output
    assert output.count("[redacted]") >= 2  # the traceback and the message
    assert "ConnectionError" in output and "the LLM call failed" in output  # still useful
    if log_format == "json":
        records = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
        assert any("exc_info" in record for record in records)
        warned = next(r for r in records if r["message"] == "an extra field")
        assert warned["url"] == "http://user:[redacted]@llm.internal"
        assert warned["nested"] == {"headers": ["Bearer [redacted]"]}
