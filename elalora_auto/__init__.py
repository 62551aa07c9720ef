"""elalora-auto: ElaLoRA (LoRA whose ranks prune and expand during training) and a search around it."""

from elalora_auto.method import ElaLoraCallback, ElaLoraConfig, ElaLoraModel, get_elalora_model

__all__ = ["ElaLoraCallback", "ElaLoraConfig", "ElaLoraModel", "get_elalora_model"]
__version__ = "0.1.0"
