"""A refusal crosses every hop as the error it is (tether.dial): its code, message and hint in
an ``OPEN_FAIL`` reason (or the front door's ``error`` answer), rebuilt as the same class on
the other side. A peer is not trusted to send a sane reason: anything else is a plain
TetherError with one printable line of bounded length, never a crash."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tether.dial import (
    MAX_ERROR_TEXT,
    error_answer,
    parse_error,
    refusal_error,
    refusal_reason,
)
from tether.errors import (
    ERROR_CODES,
    AccessDenied,
    AmbiguousTarget,
    NotFound,
    TargetOffline,
    TetherError,
    TrustError,
    error_class,
    error_code,
)
from tether.pki import CertificateExpired
from tether.proxy.routing import PortRefused
from tether.tunnel import Connection, StreamOpened, StreamRejected
from tether.tunnel.control import ControlError

DOCS = Path(__file__).resolve().parent.parent / "docs" / "tunnel-protocol.md"


def _through_open_fail(reason: str) -> str:
    """``reason`` as the opener of a stream receives it, after a real mux refused the stream
    with it (the frame cap, UTF-8 and all)."""
    root, leaf = Connection("listener"), Connection("dialer")
    leaf.receive_data(root.data_to_send())
    root.receive_data(leaf.data_to_send())
    stream_id = root.open_stream("ssh", {"type": "dial", "cluster": "leaf", "target": "x"})
    [opened] = leaf.receive_data(root.data_to_send())
    assert isinstance(opened, StreamOpened)
    leaf.reject_stream(stream_id, reason)
    [rejected] = root.receive_data(leaf.data_to_send())
    assert isinstance(rejected, StreamRejected)
    return rejected.reason


@pytest.mark.parametrize(
    "error",
    [
        NotFound(
            "node 'nosuchnode' not found in cluster 'leaf'",
            hint="run `tether ls --cluster=leaf` to see the nodes you can reach",
        ),
        AmbiguousTarget(
            "2 nodes in cluster 'leaf' match 'env=dev': a (id 1), b (id 2)",
            hint="name one by its id, or narrow the labels",
        ),
        AccessDenied("no role of carol@root (auditor) maps to a role of cluster 'leaf'"),
        TargetOffline("node 'web' is offline", hint="check that its tetherd runs"),
        TrustError("the certificate is not from this cluster or a cluster it trusts"),
        TetherError("cluster 'leaf' serves no 'ssh'"),
    ],
    ids=lambda error: type(error).__name__,
)
def test_a_leafs_refusal_reaches_the_root_as_the_same_error(error: TetherError) -> None:
    rebuilt = refusal_error(_through_open_fail(refusal_reason(error)))
    assert type(rebuilt) is type(error)
    assert (rebuilt.message, rebuilt.hint, str(rebuilt)) == (error.message, error.hint, str(error))


def test_an_error_the_kernel_has_no_code_for_travels_as_its_nearest_class() -> None:
    port = PortRefused("node 'web' serves SSH on port 3022", hint="leave out the port")
    expired = CertificateExpired("the certificate expired at 12:00")
    assert type(refusal_error(refusal_reason(port))) is AccessDenied
    assert type(refusal_error(refusal_reason(expired))) is TrustError


def test_every_code_names_its_own_class_and_the_protocol_doc_lists_it() -> None:
    documented = DOCS.read_text()
    for code, cls in ERROR_CODES.items():
        assert error_code(cls("x")) == code
        assert error_class(code) is cls
        assert f"`{code}`" in documented, f"docs/tunnel-protocol.md does not list {code}"


def test_a_reason_from_an_older_peer_is_shown_as_its_text() -> None:
    rebuilt = refusal_error("target 'db:5432' is not in this cluster's inventory")
    assert type(rebuilt) is TetherError
    assert (rebuilt.message, rebuilt.hint) == (
        "target 'db:5432' is not in this cluster's inventory",
        None,
    )


def _answer(**error: Any) -> str:
    return json.dumps({"type": "error", "error": error})


@pytest.mark.parametrize(
    ("reason", "message"),
    [
        ("", "no reason given"),
        ('{"type": "error"}', '{"type": "error"}'),
        ('{"type": "dialed", "error": {"message": "x"}}', '{"type": "dialed", "error": {"mes'),
        (_answer(type="NotFound", message=7), '{"type": "error", "error": {"type": "NotFound"'),
        (_answer(type="NotFound", message="  "), '{"type": "error", "error": {"type": "NotF'),
        (_answer(type="NotFound", message="cut") + "}", '{"type": "error", "error": {"type"'),
        ("[" * 100_000, "[" * 10),
        ('{"a":' * 5_000 + "1" + "}" * 5_000, '{"a":{"a":{'),
    ],
)
def test_a_malformed_reason_is_a_plain_error_with_its_text(reason: str, message: str) -> None:
    rebuilt = refusal_error(reason)
    assert type(rebuilt) is TetherError
    assert rebuilt.message.startswith(message) and rebuilt.hint is None
    assert len(rebuilt.message) <= MAX_ERROR_TEXT


def test_an_unknown_code_is_a_plain_error_that_keeps_message_and_hint() -> None:
    for code in ("os.system", "tether.errors.NotFound", "notfound", 404, None, ["NotFound"]):
        rebuilt = refusal_error(_answer(type=code, message="gone", hint="look elsewhere"))
        assert type(rebuilt) is TetherError
        assert (rebuilt.message, rebuilt.hint) == ("gone", "look elsewhere")


def test_a_hint_that_is_no_text_is_left_out() -> None:
    for hint in (None, 3, ["run `rm -rf /`"], {"a": 1}, "", "   "):
        rebuilt = refusal_error(_answer(type="NotFound", message="gone", hint=hint))
        assert (type(rebuilt), rebuilt.hint) == (NotFound, None)


def test_a_peers_text_reaches_the_terminal_as_one_printable_line() -> None:
    rebuilt = refusal_error(
        _answer(
            type="AccessDenied",
            message="denied\n\x1b[2J\x1b]0;owned\x07 really\r\u202e",
            hint="log in\nagain\x00",
        )
    )
    assert type(rebuilt) is AccessDenied
    assert rebuilt.message.isprintable() and rebuilt.hint is not None and rebuilt.hint.isprintable()
    assert "\x1b" not in str(rebuilt) and "\n" not in str(rebuilt)
    assert re.fullmatch(r"denied +\[2J +\]0;owned +really", rebuilt.message)
    assert rebuilt.hint == "log in again"


def test_an_oversized_error_is_cut_and_still_arrives_whole_through_open_fail() -> None:
    # the widest characters UTF-8 has, in both texts: the reason still fits one frame
    error = NotFound("\U0001f600" * 50_000, hint="\U0001f600" * 50_000)
    reason = _through_open_fail(refusal_reason(error))
    assert reason == refusal_reason(error)  # not cut by the mux
    rebuilt = refusal_error(reason)
    assert type(rebuilt) is NotFound
    assert len(rebuilt.message) == len(rebuilt.hint or "") == MAX_ERROR_TEXT
    assert rebuilt.message.endswith("…")
    # a peer that skips the encoder is cut on arrival all the same
    sent = _answer(type="NotFound", message="x" * 20_000, hint="y" * 20_000)
    arrived = refusal_error(_through_open_fail(sent))
    assert type(arrived) is TetherError  # the mux cut it mid-JSON: shown as text, bounded
    assert len(arrived.message) == MAX_ERROR_TEXT
    near_cap = _answer(type="NotFound", message="x" * 7_000, hint="y" * 7_000)
    bounded = refusal_error(near_cap)
    assert type(bounded) is NotFound
    assert len(bounded.message) == len(bounded.hint or "") == MAX_ERROR_TEXT


@given(st.text(max_size=3000))
def test_any_reason_is_some_error_of_one_bounded_printable_line(reason: str) -> None:
    rebuilt = refusal_error(reason)
    assert isinstance(rebuilt, TetherError)
    for text in (rebuilt.message, rebuilt.hint or ""):
        assert text.isprintable() and len(text) <= MAX_ERROR_TEXT


def test_the_front_door_answers_a_refusal_in_the_same_format() -> None:
    error = NotFound("node 'x' not found in cluster 'main'", hint="run `tether ls`")
    answer = error_answer(error)
    assert answer == {
        "type": "error",
        "error": {
            "type": "NotFound",
            "message": "node 'x' not found in cluster 'main'",
            "hint": "run `tether ls`",
        },
    }
    assert json.loads(refusal_reason(error)) == answer
    rebuilt = parse_error(answer)
    assert (type(rebuilt), str(rebuilt)) == (NotFound, str(error))


@pytest.mark.parametrize(
    "answer",
    [{"type": "targets"}, {"type": "error"}, {"type": "error", "error": {"message": None}}],
)
def test_an_answer_that_is_no_error_is_a_control_error(answer: dict[str, Any]) -> None:
    with pytest.raises(ControlError):
        parse_error(answer)
