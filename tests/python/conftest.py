# Fixtures live in runtime_helpers (a uniquely named module, see export/tests/conftest.py).
from runtime_helpers import built  # noqa: F401
