"""Garbage and hostile command payloads against the real command processor (no broker needed).

Every payload gets exactly one reply and nothing is raised: random bytes, random JSON, requests with
random arguments, and requests that are properly signed by the operator key but carry random arguments
(so they pass the guard and reach the handlers). Every reply must be publishable as UTF-8 JSON.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from edge_agent.keys import load_private_key, new_keypair
from edge_agent.messages import CommandRequest
from edge_agent.reporting.authentication import CommandGuard, CommandsSection
from edge_agent.reporting.commands import COMMANDS, CommandProcessor, CommandReply
from gridedge.fleet.commands import sign_request

from .conftest import scalar_values

FAULTS = settings.get_profile("gridedge-faults")
SITE, DEVICE = "faults-site", "ctrl-1"
KEYS = Path(tempfile.mkdtemp(prefix="faults-operator-"))
OPERATOR_KEY, _ = new_keypair(KEYS, kind="operator")
PRIVATE = load_private_key(OPERATOR_KEY)
scalars = scalar_values(non_finite=False, text_size=20)
json_values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=10), inner, max_size=4)),
    max_leaves=20,
)
command_names = st.one_of(st.sampled_from(COMMANDS), st.text(max_size=20))


def _processor(state: Path) -> CommandProcessor:
    section = CommandsSection(operator_public_key=OPERATOR_KEY.with_suffix(".pub"))
    guard = CommandGuard.from_config(section, SITE, DEVICE, state)
    return CommandProcessor(state / "staging", 1_000_000, guard=guard)


def _publishable(reply: CommandReply, command: str) -> None:
    assert reply.command == command
    assert reply.outcome
    if reply.outcome == "error":
        assert reply.error
    json.dumps({"request_id": reply.request_id, "error": reply.error, "data": reply.data}, ensure_ascii=False).encode(
        "utf-8"
    )


@FAULTS
@given(command=command_names, payload=st.one_of(st.binary(max_size=400), json_values.map(json.dumps).map(str.encode)))
def test_random_payloads_get_one_reply_and_never_raise(command: str, payload: bytes) -> None:
    with tempfile.TemporaryDirectory() as folder:
        _publishable(_processor(Path(folder)).handle(command, payload), command)


@FAULTS
@given(command=st.sampled_from(COMMANDS), args=st.dictionaries(st.text(max_size=12), json_values, max_size=6))
def test_signed_requests_with_random_arguments_get_a_reply_and_never_raise(command: str, args: dict[str, Any]) -> None:
    request = sign_request(PRIVATE, SITE, DEVICE, command, CommandRequest(args=args))
    with tempfile.TemporaryDirectory() as folder:
        _publishable(_processor(Path(folder)).handle(command, request.model_dump_json().encode()), command)
