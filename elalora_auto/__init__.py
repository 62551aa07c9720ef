"""elalora-auto: ElaLoRA (LoRA whose ranks prune and expand during training) and a search around it.

The public names are imported lazily so that `elalora-auto --help` and the light modules do not pay for
importing torch and transformers.
"""

from __future__ import annotations

from typing import Any

__all__ = ["ElaLoraCallback", "ElaLoraConfig", "ElaLoraModel", "get_elalora_model"]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    if name in __all__:
        from elalora_auto import method

        return getattr(method, name)
    raise AttributeError(f"module 'elalora_auto' has no attribute {name!r}")
