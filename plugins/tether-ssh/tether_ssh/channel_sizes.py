"""How large the SSH packets of a channel may be: what the node and ``tether ssh`` advertise.

SSH sends channel data in packets no larger than the receiver advertised when the channel
opened. asyncssh's default is 32 KiB (OpenSSH's too), and asyncssh spends a fixed cost in
Python on every packet (parsing, decryption call, channel bookkeeping, a write), so bulk
transfers between two asyncssh ends were bound by packets per second: measured 1 GiB through
a node in tunnel mode, 32 KiB packets cost the node 8.4-9.6 ms of CPU per MB and 256 KiB
packets 5.1-5.7 ms; 1 MiB packets cost no less than 256 KiB.

Each end says what it receives, so this changes nothing for a peer that is not Tether: an
OpenSSH client through ``tether proxy ssh`` may send packets up to this size to the node (it
sends smaller ones), and receives packets no larger than it advertised itself.
"""

from __future__ import annotations

__all__ = ["MAX_PACKET"]

#: The largest channel data packet this end accepts (asyncssh's ``max_pktsize``), in bytes.
#: A channel's window stays asyncssh's 2 MiB: eight packets in flight, and a larger window
#: measured no cheaper.
MAX_PACKET = 256 * 1024
