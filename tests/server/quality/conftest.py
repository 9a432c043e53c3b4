from tests.server.inference.conftest import serve  # noqa: F401 (the gateway over fake engines)
