"""What a process exposes, read from /proc (Linux): its listening TCP sockets and its environment."""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Iterable
from pathlib import Path

__all__ = ["environment", "is_loopback", "listening_sockets"]

_LISTEN = "0A"


def _socket_inodes(pid: int) -> set[int]:
    inodes = set()
    try:
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            try:
                link = os.readlink(fd)
            except OSError:
                continue
            if link.startswith("socket:["):
                inodes.add(int(link[len("socket:[") : -1]))
    except OSError:  # the process ended, or is not ours
        pass
    return inodes


def _address(hex_address: str) -> tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int]:
    """``0100007F:1F90`` (as /proc/net/tcp writes it: 32-bit words in host byte order) -> (address, port)."""
    host, port = hex_address.split(":")
    raw = bytes.fromhex(host)
    words = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    address = ipaddress.IPv4Address(words) if len(raw) == 4 else ipaddress.IPv6Address(words)
    return address, int(port, 16)


def listening_sockets(pids: Iterable[int]) -> list[tuple[str, int, int]]:
    """``(address, port, pid)`` of every TCP socket in LISTEN state that one of ``pids`` holds."""
    owner = {inode: pid for pid in pids for inode in _socket_inodes(pid)}
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if fields[3] != _LISTEN or int(fields[9]) not in owner:
                continue
            address, port = _address(fields[1])
            found.append((str(address), port, owner[int(fields[9])]))
    return sorted(found)


def is_loopback(address: str) -> bool:
    """127.0.0.0/8, ::1, or an IPv4 loopback address mapped into IPv6 (::ffff:127.0.0.1)."""
    parsed = ipaddress.ip_address(address)
    mapped = parsed.ipv4_mapped if isinstance(parsed, ipaddress.IPv6Address) else None
    return parsed.is_loopback or (mapped is not None and mapped.is_loopback)


def environment(pid: int) -> dict[str, str]:
    """The environment process ``pid`` started with."""
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    pairs = (entry.split(b"=", 1) for entry in raw.split(b"\0") if b"=" in entry)
    return {name.decode(errors="replace"): value.decode(errors="replace") for name, value in pairs}
