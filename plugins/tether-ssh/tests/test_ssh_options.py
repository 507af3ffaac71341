"""``tether ssh -o``, read as ``ssh`` reads its options (ssh_config(5)); the options' effects
run against real daemons in test_ssh_habits.py."""

from __future__ import annotations

import pytest
from tether_ssh.forwards import DynamicForward, LocalForward, RemoteForward
from tether_ssh.options import SUPPORTED, OptionError, SSHOptions, parse_options


@pytest.mark.parametrize(
    "text", ["User=root", "user=root", "User root", "USER = root", '  User "root"']
)
def test_option_is_read_in_any_of_the_forms_ssh_accepts(text: str) -> None:
    assert parse_options([text]).user == "root"


def test_the_first_value_counts_and_lists_add_up() -> None:
    options = parse_options(
        [
            "Port=2222",
            "Port=22",
            "LocalForward=8080 db:5432",
            "LocalForward 127.0.0.1:8081:[fd00::1]:80",
            "RemoteForward 0 localhost:3000",
            "DynamicForward [::1]:1080",
            "SendEnv LANG TERM_*",
            "SendEnv=-LC_*",
        ]
    )
    assert options.port == 2222
    assert options.local_forwards == (
        LocalForward(port=8080, host="db", host_port=5432),
        LocalForward(bind_address="127.0.0.1", port=8081, host="fd00::1", host_port=80),
    )
    assert options.remote_forwards == (RemoteForward(port=0, host="localhost", host_port=3000),)
    assert options.dynamic_forwards == (DynamicForward(bind_address="::1", port=1080),)
    assert options.send_env == ("LANG", "TERM_*", "-LC_*")


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("ProxyJump=bastion", "ssh option 'ProxyJump' is not supported by tether ssh"),
        ("Port=http", "option Port: 'http' is not a port number"),
        ("Port=70000", "option Port: '70000' is not a port number"),
        ("ForwardAgent=maybe", "option ForwardAgent: 'maybe' is not yes or no"),
        ("RequestTTY=always", "option RequestTTY: 'always' is not one of auto, yes, no, force"),
        ("User", "option User takes one value, not 0"),
        ("LocalForward=8080", "bad local forward '8080'"),
        ("DynamicForward=a:b:c", "bad dynamic forward 'a:b:c'"),
        ("SendEnv", "option SendEnv needs at least one variable name"),
        ('User="root', "option User: No closing quotation"),
        ("", "-o needs Option=value"),
    ],
)
def test_a_bad_option_says_what_is_wrong(text: str, problem: str) -> None:
    with pytest.raises(OptionError) as refused:
        parse_options([text])
    assert problem in str(refused.value)


def test_the_refusal_of_an_unsupported_option_lists_the_supported_ones() -> None:
    with pytest.raises(OptionError) as refused:
        parse_options(["Compression=yes"])
    assert str(refused.value).endswith(f"(it takes {', '.join(SUPPORTED)})")


def test_send_env_starts_from_the_locale_and_removes_with_a_dash() -> None:
    environ = {"LANG": "C", "LC_ALL": "C", "TERM_PROGRAM": "x", "SECRET": "s"}
    assert SSHOptions().environment(environ) == {"LANG": "C", "LC_ALL": "C"}
    chosen = parse_options(["SendEnv=-LC_* TERM_*"]).environment(environ)
    assert chosen == {"LANG": "C", "TERM_PROGRAM": "x"}
