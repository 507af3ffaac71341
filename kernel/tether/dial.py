"""The dial request: one format for every hop a stream to a target takes.

A client asks its proxy for a target with one JSON line on a protocol's ALPN (the "front
door"); a root's proxy asks a leaf's proxy in the metadata of a tunnel stream's OPEN; a proxy
asks a node in tunnel mode the same way. All three carry the same object: string fields only
(the mux's OPEN metadata is a JSON object of strings), each hop adding what it alone can vouch
for (see ``docs/tunnel-protocol.md``, "Dialing a target"). This module is sans-IO: it turns
that object into a :class:`DialRequest` and back, and describes the answer, with one-line
errors for anything malformed.

A refusal is one format on every hop too: the ``error`` answer (:func:`error_answer`), a line
on the front door and the reason of a tunnel stream's ``OPEN_FAIL`` (:func:`refusal_reason`),
so that the error a leaf or an agent raised reaches the user as the same class with the same
message and hint (:func:`refusal_error`). What a peer sends there is not trusted: each text is
cut to one printable line, an unknown code is a plain :class:`~tether.errors.TetherError`,
and a reason that is no error answer (an older peer's plain text) is shown as its text.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import attrs

from tether.errors import TetherError, error_class, error_code
from tether.tunnel.control import ControlError

__all__ = [
    "DIAL",
    "HOST_CAS",
    "LIST",
    "MAX_ERROR_TEXT",
    "MAX_FIELD",
    "OPS",
    "DialRequest",
    "DialedTarget",
    "error_answer",
    "host_cas_answer",
    "parse_error",
    "parse_host_cas",
    "parse_targets",
    "refusal_error",
    "refusal_reason",
    "targets_answer",
]

#: Open a stream to one target.
DIAL = "dial"
#: List the targets of a cluster the user may see (``tether ls``).
LIST = "list"
#: The SSH host CAs of a cluster the user may see (``tether config``); front door only.
HOST_CAS = "host_cas"
OPS = (DIAL, LIST, HOST_CAS)
#: A field longer than this is refused: a host name, labels or a certificate fit easily.
MAX_FIELD = 8 * 1024
#: An error's message or hint is cut to this many characters when it crosses a hop; an
#: ``OPEN_FAIL`` reason holding both (at most 4 bytes a character) stays well under the mux's
#: 16 KiB cap, so it is never cut mid-JSON.
MAX_ERROR_TEXT = 1000


def _string(fields: Mapping[str, Any], key: str, *, required: bool = False) -> str:
    value = fields.get(key, "")
    if not isinstance(value, str):
        raise ControlError(f"the dial request's {key!r} must be a string, got {value!r}"[:200])
    if required and not value:
        raise ControlError(f"the dial request needs a non-empty string {key!r}")
    if len(value) > MAX_FIELD:
        raise ControlError(f"the dial request's {key!r} is longer than {MAX_FIELD} characters")
    return value


def _port(fields: Mapping[str, Any]) -> int:
    text = _string(fields, "port")
    if not text:
        return 0
    if not (text.isascii() and text.isdigit()) or int(text) > 65535:
        raise ControlError(f"port must be a number from 0 to 65535 (as a string), got {text!r}")
    return int(text)


@attrs.frozen(kw_only=True)
class DialRequest:
    """What a hop asks of the next one.

    :param op: :data:`DIAL`, :data:`LIST` or :data:`HOST_CAS`.
    :param cluster: the cluster the target is in (the first proxy's own, or a leaf).
    :param target: what the user typed: a name, an id, an address, or labels (``env=prod``);
        for :data:`DIAL` only.
    :param port: 0 for the target's own port; any other is refused unless it is that port.
    :param client: the user's address as the first proxy saw it; set by that proxy, never
        taken from the client.
    :param user_cert: base64 DER of the user's X.509 certificate; set by the first proxy from
        the TLS handshake, never taken from the client. The next hop verifies it and decides
        with it what the user may see.
    """

    op: str
    cluster: str
    target: str = ""
    port: int = 0
    client: str = ""
    user_cert: str = ""

    @classmethod
    def from_fields(cls, fields: Mapping[str, Any]) -> DialRequest:
        """Read a request (a front-door line or OPEN metadata); unknown fields are ignored.

        :raises ControlError: a field is missing, of the wrong type, too long or out of range.
        """
        op = fields.get("type")
        if op not in OPS:
            shown = op if isinstance(op, str) else repr(op)
            raise ControlError(f"expected a dial, list or host_cas request, got {shown!r}"[:200])
        return cls(
            op=op,
            cluster=_string(fields, "cluster", required=True),
            target=_string(fields, "target", required=op == DIAL),
            port=_port(fields),
            client=_string(fields, "client"),
            user_cert=_string(fields, "user_cert"),
        )

    def to_fields(self) -> dict[str, str]:
        """The request as a JSON object of strings; empty fields are left out."""
        fields = {
            "type": self.op,
            "cluster": self.cluster,
            "target": self.target,
            "port": str(self.port) if self.port else "",
            "client": self.client,
            "user_cert": self.user_cert,
        }
        return {key: value for key, value in fields.items() if value}

    def from_client(self, peer: str, user_cert: str) -> DialRequest:
        """This request as the first proxy forwards it: with the user's address and
        certificate as the proxy saw them, whatever the client wrote there."""
        return attrs.evolve(self, client=peer, user_cert=user_cert)


@attrs.frozen(kw_only=True)
class DialedTarget:
    """The target a dial reached, as the answer (``{"type": "dialed", ...}``) names it.

    :param kind: its resource kind (``node``).
    :param id: its resource name (a node's host id: what its host certificate names).
    :param name: the name people type (a node's host name).
    :param addr: ``host:port`` where the proxy reached it, ``""`` through its tunnel.
    :param use_tunnel: reached through its own tunnel.
    :param host_cas: the SSH host CAs of its cluster as the first proxy's auth knows them
        (a leaf's come from the trust handshake), for a client to check the target's host
        certificate; empty for the proxy's own cluster, whose CAs the client has from its login.
    """

    kind: str
    id: str
    name: str
    addr: str = ""
    use_tunnel: bool = False
    host_cas: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "id": self.id,
            "name": self.name,
            "addr": self.addr,
            "use_tunnel": self.use_tunnel,
        }

    @classmethod
    def from_answer(cls, answer: Mapping[str, Any]) -> DialedTarget:
        """Read a ``dialed`` answer.

        :raises ControlError: it is not one, or a field is missing or of the wrong type.
        """
        if answer.get("type") != "dialed":
            raise ControlError(f"expected a dialed answer, got {answer.get('type')!r}")
        data = answer.get("target")
        if not isinstance(data, dict):
            raise ControlError("the dialed answer has no target")
        texts = {key: data.get(key) for key in ("kind", "id", "name", "addr")}
        if not all(isinstance(value, str) for value in texts.values()):
            raise ControlError("the dialed answer's target lacks kind, id, name or addr")
        if not isinstance(data.get("use_tunnel"), bool):
            raise ControlError("the dialed answer's target lacks use_tunnel")
        return cls(
            kind=str(texts["kind"]),
            id=str(texts["id"]),
            name=str(texts["name"]),
            addr=str(texts["addr"]),
            use_tunnel=bool(data["use_tunnel"]),
            host_cas=tuple(parse_host_cas({**answer, "type": HOST_CAS}, default=True)),
        )

    def answer(self) -> dict[str, Any]:
        """The ``dialed`` answer naming this target (host CAs included when there are some)."""
        answer: dict[str, Any] = {"type": "dialed", "target": self.to_json()}
        if self.host_cas:
            answer["host_cas"] = list(self.host_cas)
        return answer


def targets_answer(docs: list[dict[str, Any]]) -> dict[str, Any]:
    """The answer to :data:`LIST`: the documents of the targets the user may see."""
    return {"type": "targets", "targets": docs}


def parse_targets(answer: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The documents of a :func:`targets_answer`.

    :raises ControlError: it is something else.
    """
    found = answer.get("targets")
    if answer.get("type") != "targets" or not isinstance(found, list):
        raise ControlError(f"expected a list of targets, got {answer.get('type')!r}")
    if not all(isinstance(doc, dict) for doc in found):
        raise ControlError("the list of targets holds something else than documents")
    return list(found)


def host_cas_answer(lines: list[str]) -> dict[str, Any]:
    """The answer to :data:`HOST_CAS`."""
    return {"type": HOST_CAS, "host_cas": lines}


def parse_host_cas(answer: Mapping[str, Any], *, default: bool = False) -> list[str]:
    """The SSH host CA lines of a :func:`host_cas_answer` (or of a ``dialed`` answer).

    :param default: an answer without ``host_cas`` means none.
    :raises ControlError: it is something else, or a line is not a string.
    """
    found = answer.get("host_cas", [] if default else None)
    if answer.get("type") != HOST_CAS or not isinstance(found, list):
        raise ControlError(f"expected host CAs, got {answer.get('type')!r}")
    if not all(isinstance(line, str) for line in found):
        raise ControlError("the answer's host_cas holds something else than strings")
    return list(found)


def _one_line(text: str) -> str:
    """``text`` as one printable line of at most :data:`MAX_ERROR_TEXT` characters: a peer's
    text reaches a terminal, so control characters (escapes, newlines) become spaces."""
    cut = len(text) > MAX_ERROR_TEXT
    line = "".join(c if c.isprintable() else " " for c in text[:MAX_ERROR_TEXT]).strip()
    return f"{line[: MAX_ERROR_TEXT - 1]}…" if cut else line


def error_answer(exc: TetherError) -> dict[str, Any]:
    """The ``error`` answer that tells the previous hop about ``exc``: its code (from
    :data:`tether.errors.ERROR_CODES`), message and hint, one line each."""
    return {
        "type": "error",
        "error": {
            "type": error_code(exc),
            "message": _one_line(exc.message),
            "hint": _one_line(exc.hint) if exc.hint else None,
        },
    }


def parse_error(answer: Mapping[str, Any]) -> TetherError:
    """The error an :func:`error_answer` describes, as its class with its message and hint
    (one line each); a code the kernel does not know is a :class:`TetherError`.

    :raises ControlError: it is no error answer, or its message is missing or no string.
    """
    error = answer.get("error")
    if answer.get("type") != "error" or not isinstance(error, dict):
        raise ControlError(f"expected an error answer, got {answer.get('type')!r}"[:200])
    message, hint = error.get("message"), error.get("hint")
    if not isinstance(message, str) or not message.strip():
        raise ControlError("the error answer has no message")
    return error_class(error.get("type"))(
        _one_line(message), hint=(_one_line(hint) or None) if isinstance(hint, str) else None
    )


def refusal_reason(exc: TetherError) -> str:
    """The reason of an ``OPEN_FAIL`` that refuses a stream because of ``exc``: its
    :func:`error_answer` as compact JSON."""
    return json.dumps(error_answer(exc), ensure_ascii=False, separators=(",", ":"))


def refusal_error(reason: str) -> TetherError:
    """The error a peer's ``OPEN_FAIL`` reason describes (:func:`refusal_reason`), rebuilt as
    its class; a reason that is not one (an older peer's plain text, the mux's own refusals,
    anything malformed) is a :class:`TetherError` with the reason as its message."""
    if reason.startswith("{"):
        try:
            answer = json.loads(reason)
        except (ValueError, RecursionError):
            answer = None
        if isinstance(answer, dict):
            try:
                return parse_error(answer)
            except ControlError:
                pass
    return TetherError(_one_line(reason) or "no reason given")
