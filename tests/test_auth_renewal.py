"""The auth service renews its own server certificate while it runs, as hosts renew theirs:
an auth process up longer than ``auth_service.host_cert_ttl`` keeps answering its proxies,
nodes and ``tetherctl -c``. Real processes on 127.0.0.1, with a lifetime of seconds.
"""

from __future__ import annotations

import datetime
import pathlib
import time

from cryptography.hazmat.primitives.serialization import Encoding

from tether import pki
from tether.testing.cluster import served_certificate, start_cluster, wait_for


def test_auth_renews_its_certificate_and_still_answers_past_the_first_ones_expiry(
    tmp_path: pathlib.Path,
) -> None:
    cluster = start_cluster(
        tmp_path / "main", "main", config={"auth_service": {"host_cert_ttl": "9s"}}
    )
    try:
        first = served_certificate(cluster.auth_addr)
        lifetime = first.not_valid_after_utc - first.not_valid_before_utc
        assert lifetime <= datetime.timedelta(seconds=9) + pki.CLOCK_SKEW
        wait_for(
            lambda: served_certificate(cluster.auth_addr).serial_number != first.serial_number,
            "auth to present a renewed certificate",
        )
        renewed = served_certificate(cluster.auth_addr)
        assert renewed.not_valid_after_utc > first.not_valid_after_utc
        assert pki.read_x509_identity(renewed.public_bytes(Encoding.DER)).kind == "auth"
        # past the first certificate's expiry, clients that verify auth (tetherctl -c, which
        # accepts only auth's certificate) still reach it
        time.sleep(max((first.not_valid_after_utc.timestamp() + 1) - time.time(), 0))
        assert "main" in cluster.tetherctl("status").stdout
        assert "auth service renewed its certificates" in cluster.log_text()
    finally:
        cluster.stop()
