"""Whether the Hugging Face hub can be reached, asked once per process in about a second,
so that a hub name (teacher or dataset) on a machine without the hub fails in one line
instead of after `huggingface_hub`'s half-minute of retries. Names already in the local
cache still load, offline.
"""

from __future__ import annotations

import contextlib
import functools
import socket
from collections.abc import Iterator
from urllib.parse import urlsplit

_CONNECT_TIMEOUT_S = 2.0


def hub_endpoint() -> str:
    """The hub's URL (`HF_ENDPOINT`, default https://huggingface.co)."""
    from huggingface_hub import constants

    return constants.ENDPOINT


@functools.cache
def hub_reachable() -> bool:
    """False when `HF_HUB_OFFLINE` is set or the endpoint takes no TCP connection."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return False
    parts = urlsplit(hub_endpoint())
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        socket.create_connection((parts.hostname, port), timeout=_CONNECT_TIMEOUT_S).close()
    except (OSError, ValueError):
        return False
    return True


@contextlib.contextmanager
def offline_hub() -> Iterator[None]:
    """Inside: `huggingface_hub`, `transformers` and `datasets` read only the local cache
    (no request, no retry), as with `HF_HUB_OFFLINE=1`."""
    import datasets.config
    from huggingface_hub import constants

    saved = constants.HF_HUB_OFFLINE, datasets.config.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = datasets.config.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE, datasets.config.HF_HUB_OFFLINE = saved


class HubUnreachable(OSError):
    """A hub name that is not in the local cache while the hub cannot be reached."""

    def __init__(self, name: str) -> None:
        super().__init__(
            f"{name!r} is not a local path and not in the local cache, and the Hugging Face "
            f"hub ({hub_endpoint()}) cannot be reached"
        )
