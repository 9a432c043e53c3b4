"""How a vLLM OpenAI server is started: a free local port for it.

Standard library only: the gateway imports it (as it imports compress.schema), and so do
compress's speed runs and the tests, which is why it lives in compress/.
"""

from __future__ import annotations

import socket


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on now (the OS picks it), for an engine or a test server."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]
