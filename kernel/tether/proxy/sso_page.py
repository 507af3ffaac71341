"""The page a browser sees after the identity provider sent it back: approve this login?

The provider vouched for whoever uses this browser, but the login may have been started by
someone else, who shared its link. So the page says what is being approved (the user the
provider named, the roles, the cluster, the ``tether`` client's loopback address, how long
the certificates last, until when it may be approved) and the browser carries the login's
one-time code to that client only when the user presses Approve.
"""

from __future__ import annotations

import datetime
import html
import urllib.parse

from starlette.responses import HTMLResponse

from tether.auth.sso_flows import Approval, check_client_redirect
from tether.durations import format_duration

__all__ = ["APPROVE_FORM_ID", "approval_page"]

#: the ``id`` of the page's form, which a test (playing the browser) submits
APPROVE_FORM_ID = "approve"

_HEADERS = {
    # the code is in the page: never kept, never framed (a click fooled through a frame
    # would approve), never leaked to another site
    "cache-control": "no-store",
    "referrer-policy": "no-referrer",
    "x-frame-options": "DENY",
    "content-security-policy": "default-src 'none'; style-src 'unsafe-inline'; "
    "frame-ancestors 'none'",
}


def approval_page(approval: Approval) -> HTMLResponse:
    """The page asking the user to approve ``approval``, whose button sends the browser, with
    the login's id and code, to the client's loopback listener."""
    target = urllib.parse.urlsplit(check_client_redirect(approval.redirect))
    action = urllib.parse.urlunsplit(target._replace(query=""))
    hidden = "".join(
        f'<input type="hidden" name="{html.escape(name)}" value="{html.escape(value)}">'
        for name, value in urllib.parse.parse_qsl(target.query)
    )
    expires = datetime.datetime.fromtimestamp(approval.expires, datetime.UTC)
    ttl = format_duration(datetime.timedelta(seconds=approval.certificate_ttl_seconds))
    rows = (
        ("User", f"{approval.username} (signed in through {approval.method})"),
        ("Roles", ", ".join(approval.roles)),
        ("Cluster", approval.cluster),
        ("Certificates go to", f"the tether client listening at {approval.client}"),
        ("Certificates valid for", ttl),
        ("Approve before", expires.strftime("%Y-%m-%d %H:%M:%S UTC")),
    )
    table = "".join(
        f"<tr><th>{html.escape(label)}</th><td>{html.escape(value)}</td></tr>"
        for label, value in rows
    )
    page = (
        "<!doctype html><meta charset=utf-8><title>Tether: approve this login?</title>"
        "<style>body{font-family:sans-serif;max-width:40em;margin:2em auto}"
        "th{text-align:left;padding-right:1em}</style>"
        f"<h1>Approve this login to {html.escape(approval.cluster)}?</h1>"
        f"<table>{table}</table>"
        "<p><strong>Approve only if you just ran <code>tether login</code> on this computer."
        "</strong> If someone sent you this link, close this page: nothing is sent to anyone "
        "unless you approve, and the login expires unused.</p>"
        f'<form id="{APPROVE_FORM_ID}" method="get" action="{html.escape(action)}">{hidden}'
        "<button type=submit>Approve</button></form>"
    )
    return HTMLResponse(page, headers=_HEADERS)
