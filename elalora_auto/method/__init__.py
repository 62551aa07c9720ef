"""ElaLoRA as a PEFT-like tuner: config, elastic layer, allocator, model wrapper and Trainer callback."""

from elalora_auto.method.callback import ElaLoraCallback
from elalora_auto.method.config import ElaLoraConfig
from elalora_auto.method.model import ElaLoraModel, get_elalora_model

__all__ = ["ElaLoraCallback", "ElaLoraConfig", "ElaLoraModel", "get_elalora_model"]
