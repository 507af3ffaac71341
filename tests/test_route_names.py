"""Route names (tether.route_names): the TLS server names that select a protocol, a cluster
and a target for a client that can set only a server name. Whatever Tether calls a cluster or
a target survives the trip through one DNS label; anything else a client might send is no
route (None), never an error, since a server name comes from anyone."""

from __future__ import annotations

import ssl

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tether.route_names import (
    MAX_SERVER_NAME,
    ROUTE_NAME_SUFFIX,
    RouteName,
    is_route_domain,
    parse_route_server_name,
    route_server_name,
)

#: what a cluster or target may be called: any printable text (two of ten characters of up to
#: four UTF-8 bytes each always fit in one name)
NAMES = st.text(st.characters(codec="utf-8").filter(str.isprintable), min_size=1, max_size=10)
PREFIXES = st.from_regex(r"[a-z0-9]{1,8}", fullmatch=True)


def test_a_route_name_is_one_label_of_hex_under_the_suffix() -> None:
    name = route_server_name("kube", "leaf", "prod")
    assert name == "kube-6c656166-70726f64.tether.cluster.local"
    assert name.endswith("." + ROUTE_NAME_SUFFIX) and name.count(".") == 3


@pytest.mark.parametrize(
    ("cluster", "target"),
    [
        ("Leaf", "Web-1"),  # upper case, which DNS would fold
        ("eu.leaf", "db.prod.internal"),  # dots, which would leave the wildcard's reach
        ("leaf_2", "node_7"),  # underscores, which no DNS label may hold
        ("leaf", "env=prod,tier=db"),  # labels, as a user types them
        ("ünï", "cødé"),
    ],
)
def test_names_dns_cannot_hold_survive_the_round_trip(cluster: str, target: str) -> None:
    name = route_server_name("echo", cluster, target)
    assert name.isascii() and name == name.lower()
    assert parse_route_server_name(name) == RouteName("echo", cluster, target)


@given(prefix=PREFIXES, cluster=NAMES, target=NAMES)
def test_every_route_name_parses_back_to_what_made_it(
    prefix: str, cluster: str, target: str
) -> None:
    name = route_server_name(prefix, cluster, target)
    assert len(name) <= MAX_SERVER_NAME
    assert parse_route_server_name(name) == RouteName(prefix, cluster, target)
    # clients and resolvers may change the letter case of a name on the way
    assert parse_route_server_name(name.upper()) == RouteName(prefix, cluster, target)


@pytest.mark.parametrize(
    "name",
    [
        "",
        "localhost",
        "tether.cluster.local",
        "*.tether.cluster.local",
        "echo-6c656166-6e6f6465.tether.cluster.local.",  # a trailing dot is no SNI
        "echo-6c656166-6e6f6465.example.com",
        "echo-6c656166-6e6f6465.x.tether.cluster.local",  # two labels before the suffix
        "a.echo-6c656166-6e6f6465.tether.cluster.local",
        "echo-6c656166.tether.cluster.local",  # no target
        "echo-6c656166-6e6f6465-74.tether.cluster.local",  # a part too many
        "echo--6e6f6465.tether.cluster.local",  # an empty cluster
        "-6c656166-6e6f6465.tether.cluster.local",  # no prefix
        "ec_ho-6c656166-6e6f6465.tether.cluster.local",
        "echo-6c65616-6e6f6465.tether.cluster.local",  # odd hex
        "echo-6c65 6166-6e6f6465.tether.cluster.local",  # what bytes.fromhex would forgive
        "echo-zz-6e6f6465.tether.cluster.local",
        "echo-ff-6e6f6465.tether.cluster.local",  # not UTF-8
        "echo-0a-6e6f6465.tether.cluster.local",  # a newline: not printable
        "écho-6c656166-6e6f6465.tether.cluster.local",
        "echo-6c656166-" + "61" * 120 + ".tether.cluster.local",  # over 253 characters
    ],
)
def test_a_malformed_name_is_no_route(name: str) -> None:
    assert parse_route_server_name(name) is None


@given(st.text(max_size=80))
def test_no_server_name_makes_the_parser_raise(name: str) -> None:
    parse_route_server_name(name)


@pytest.mark.parametrize(
    ("prefix", "cluster", "target", "message"),
    [
        ("Kube", "leaf", "x", "prefix is lower-case letters and digits"),
        ("ku-be", "leaf", "x", "prefix is lower-case letters and digits"),
        ("", "leaf", "x", "prefix is lower-case letters and digits"),
        ("kube", "", "x", "needs a cluster of printable text"),
        ("kube", "leaf", "", "needs a target of printable text"),
        ("kube", "leaf", "a\nb", "needs a target of printable text"),
    ],
)
def test_what_cannot_make_a_route_name_is_said(
    prefix: str, cluster: str, target: str, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        route_server_name(prefix, cluster, target)


def test_a_name_over_253_characters_is_refused_with_what_to_do() -> None:
    with pytest.raises(ValueError) as refused:
        route_server_name("kube", "leaf", "t" * 120)
    assert "would be 275 characters, more than the 253 a TLS server name may have" in str(
        refused.value
    )
    assert "name the target by a shorter name or its id" in str(refused.value)
    # the longest target that fits still makes a name, with a first label past 63 characters
    longest = route_server_name("kube", "leaf", "t" * 109)
    assert len(longest) == MAX_SERVER_NAME and len(longest.partition(".")[0]) > 63


def test_pythons_ssl_takes_a_long_label_as_bytes() -> None:
    # the docstring's advice: the IDNA codec behind a str server_hostname checks label lengths
    name = route_server_name("kube", "leaf", "t" * 40)
    context = ssl.create_default_context()
    with pytest.raises(UnicodeError):
        context.wrap_bio(ssl.MemoryBIO(), ssl.MemoryBIO(), server_hostname=name)
    context.wrap_bio(ssl.MemoryBIO(), ssl.MemoryBIO(), server_hostname=name.encode())


@pytest.mark.parametrize(
    ("name", "within"),
    [
        ("*.tether.cluster.local", True),
        ("kube-6c-6c.tether.cluster.local", True),
        ("TETHER.cluster.LOCAL", True),
        ("a.b.tether.cluster.local.", True),
        ("tether.cluster.local.evil.com", False),
        ("eviltether.cluster.local", False),
        ("*.example.com", False),
    ],
)
def test_the_route_domain_is_told_from_other_names(name: str, within: bool) -> None:
    assert is_route_domain(name) is within
