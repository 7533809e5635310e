"""One way into a call for every transport (``agent.intake``), and no circle of imports
through the app module."""

from __future__ import annotations

import ast
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.testclient import TestClient
from starlette.websockets import WebSocket, WebSocketDisconnect

from agent import intake
from agent.config import Settings
from agent.state import AppState, SampledLog
from pipeline.conversation import Engines

AGENT = Path(__file__).resolve().parents[2] / "agent"
KEY = "an-api-key-long-enough-123"

PROCESS_ENTRY = {"cli.py", "workers.py"}
"""Build the app with ``agent.server.create_app`` and run it (a worker of
``serve --workers N`` too); no transport."""

TRANSPORTS = {
    # module: (endpoint function, the intake call it must make)
    "server.py": ("_websocket", "admit_websocket"),
    "webrtc.py": ("_offer", "admit_request"),
    "telephony.py": ("_twilio", "admit_websocket"),
    "openai_api.py": ("answer_call", "check"),
}

GUARDS = {"credential_ok", "origin_ok", "secret_ok", "twilio_signature_ok"}
"""The predicates of ``agent.gate`` a transport could call to build its own way in."""


def _tree(name: str) -> ast.Module:
    return ast.parse((AGENT / name).read_text(), filename=name)


def _imports(tree: ast.Module) -> Iterator[tuple[str, set[str]]]:
    """(module, names) of every import, wherever it is (functions, TYPE_CHECKING)."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, set()
        elif isinstance(node, ast.ImportFrom) and node.module is not None:
            names = {alias.name for alias in node.names}
            yield node.module, names
            if node.module == "agent":
                for name in names:
                    yield f"agent.{name}", set()


def test_no_module_under_agent_imports_the_app_module() -> None:
    offenders = {
        path.name
        for path in AGENT.glob("*.py")
        if path.name not in PROCESS_ENTRY | {"server.py"}
        and any(module == "agent.server" for module, _ in _imports(_tree(path.name)))
    }
    assert not offenders, f"{sorted(offenders)} import agent.server"


def test_only_intake_asks_the_gate_who_may_call() -> None:
    for path in AGENT.glob("*.py"):
        if path.name in {"intake.py", "gate.py"}:
            continue
        used = {
            name
            for module, names in _imports(_tree(path.name))
            if module == "agent.gate"
            for name in names
        }
        assert not used & GUARDS, f"{path.name} checks {sorted(used & GUARDS)} itself"


@pytest.mark.parametrize(("module", "entry"), sorted(TRANSPORTS.items()))
def test_every_transport_enters_through_intake(module: str, entry: tuple[str, str]) -> None:
    function, admit = entry
    (endpoint,) = [
        node for node in ast.walk(_tree(module))
        if isinstance(node, ast.AsyncFunctionDef) and node.name == function
    ]
    calls = [
        node.func.attr for node in ast.walk(endpoint)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
        and isinstance(node.func.value, ast.Name) and node.func.value.id == "intake"
    ]
    assert admit in calls, f"{module}:{function} does not call intake.{admit}"


# --------------------------------------------- a transport that is not written yet


def _new_transport(settings: Settings) -> tuple[Starlette, AppState]:
    """A toy transport, WebSocket and HTTP, whose only guard is the intake call."""
    state = AppState(settings, Engines(stt=None, llm=None, tts=None, vad=None))  # type: ignore[arg-type]
    held: list[object] = []

    async def ws_endpoint(websocket: WebSocket) -> None:
        slot = await intake.admit_websocket(websocket, intake.Transport.WS)
        if slot is None:
            return
        held.append(slot)
        await websocket.accept()
        try:
            await websocket.receive_text()
        except WebSocketDisconnect:
            pass
        finally:
            slot.release()

    async def http_endpoint(request: Request) -> Response:
        admitted = intake.admit_request(request, intake.Transport.WEBRTC)
        if isinstance(admitted, Response):
            return admitted
        held.append(admitted)
        return JSONResponse({"slot": admitted.id})  # kept: the call "runs" on

    app = Starlette(routes=[WebSocketRoute("/new", ws_endpoint),
                            Route("/new-http", http_endpoint, methods=["POST"])])
    app.state.voiceforge = state
    return app, state


def test_a_new_transport_gets_every_guard_from_the_one_call() -> None:
    app, state = _new_transport(Settings(api_key=KEY, max_sessions=2))
    auth = {"Authorization": f"Bearer {KEY}"}
    with TestClient(app) as client:
        assert client.post("/new-http").status_code == 403  # no credential
        evil = {**auth, "Origin": "https://evil.example"}
        assert client.post("/new-http", headers=evil).status_code == 403
        assert client.post("/new-http", headers=auth).status_code == 200
        assert state.open_calls() == 1
        with client.websocket_connect("/new", headers=auth):
            assert state.open_calls() == 2  # both transports count against one limit
            full = client.post("/new-http", headers=auth)
            assert full.status_code == 503 and full.json()["error"] == "max_sessions"
            assert "Retry-After" in full.headers
        # The WebSocket call ended: its slot is free again, the HTTP one still held.
        assert state.open_calls() == 1
        state.draining = True
        draining = client.post("/new-http", headers=auth)
        assert draining.status_code == 503 and draining.json()["error"] == "draining"
    refusals = {
        sample.labels["reason"]: sample.value
        for metric in state.metrics.registry.collect() if metric.name == "voiceforge_refusals"
        for sample in metric.samples if sample.name == "voiceforge_refusals_total"
    }
    assert refusals == {"unauthorized": 1.0, "origin": 1.0, "max_sessions": 1.0, "draining": 1.0}


def test_refusals_are_logged_a_few_times_a_window_not_once_each(
    caplog: pytest.LogCaptureFixture,
) -> None:
    target = logging.getLogger("test.sampled")
    sampled = SampledLog(burst=3, window_s=3600.0)
    with caplog.at_level(logging.WARNING, logger="test.sampled"):
        logged = [
            sampled.log(target, logging.WARNING, "origin", "refused %s", i) for i in range(1000)
        ]
        sampled.log(target, logging.WARNING, "unauthorized", "another reason")
    assert logged.count(True) == 3
    assert len(caplog.records) == 4
