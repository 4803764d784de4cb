# Fixtures live in export_helpers (a uniquely named module, so that this folder and
# tests/python can be collected in one pytest run).
from export_helpers import (  # noqa: F401
    arch_folders,
    smollm_fp32,
    smollm_gguf,
    smollm_int8,
    tiny_folders,
)
