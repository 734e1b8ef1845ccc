"""Tiny Hugging Face transformers (random init) and the share of their units a spec permutes."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from gamfsolve import PermutationSpec, Split

transformers = __import__("pytest").importorskip("transformers")

_COMMON = {"hidden_size": 16, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 32}


def _gpt2() -> nn.Module:
    config = transformers.GPT2Config(n_embd=16, n_layer=2, n_head=4, vocab_size=50, n_positions=16, use_cache=False,
                                     bos_token_id=0, eos_token_id=0)
    return transformers.GPT2LMHeadModel(config)


def _bert() -> nn.Module:
    return transformers.BertForSequenceClassification(
        transformers.BertConfig(vocab_size=50, max_position_embeddings=16, **_COMMON))


def _vit() -> nn.Module:
    return transformers.ViTForImageClassification(
        transformers.ViTConfig(image_size=8, patch_size=4, num_channels=1, num_labels=3, **_COMMON))


def _llama() -> nn.Module:
    config = transformers.LlamaConfig(vocab_size=50, num_key_value_heads=2, max_position_embeddings=16,
                                      use_cache=False, bos_token_id=0, eos_token_id=0, pad_token_id=0, **_COMMON)
    return transformers.LlamaForCausalLM(config)


# name -> (factory, example-input factory, logits layer)
HF: dict[str, tuple[Callable[[], nn.Module], Callable[[], torch.Tensor], str]] = {
    "gpt2": (_gpt2, lambda: torch.randint(0, 50, (2, 6)), "lm_head"),
    "bert": (_bert, lambda: torch.randint(0, 50, (2, 6)), "classifier"),
    "vit": (_vit, lambda: torch.randn(2, 1, 8, 8), "classifier"),
    "llama": (_llama, lambda: torch.randint(0, 50, (2, 6)), "lm_head"),
}


def make_hf(name: str, seed: int = 0, *, eager: bool = False) -> tuple[nn.Module, torch.Tensor]:
    """A tiny model of ``name`` in eval mode and an example batch.

    ``eager=True`` selects the ``matmul`` / ``softmax`` attention instead of
    ``scaled_dot_product_attention``.
    """
    factory, inputs, _ = HF[name]
    torch.manual_seed(seed)
    model = factory().eval()
    if eager:
        for module in model.modules():
            config = getattr(module, "config", None)
            if config is not None:
                config._attn_implementation = "eager"
    return model, inputs()


def _permuted(entry: object, length: int) -> int:
    """How many of an axis's ``length`` entries some group moves."""
    if entry is None:
        return 0
    if isinstance(entry, Split):
        return length if any(g is not None for g in entry.groups) else 0
    parts = getattr(entry, "parts", None)
    if parts is None:
        return length
    return length - sum(p for p in parts if isinstance(p, int))


def linear_share(model: nn.Module, spec: PermutationSpec, logits: str) -> float:
    """Share of the output units of every ``Linear`` (and ``Conv1D``) but ``logits`` that some group permutes."""
    permuted = total = 0
    for name, module in model.named_modules():
        weight = getattr(module, "weight", None)
        if name == logits or weight is None or weight.ndim != 2:
            continue
        if isinstance(module, nn.Linear):
            axis = 0
        elif type(module).__name__ == "Conv1D":  # Hugging Face's (in, out) layout
            axis = 1
        else:
            continue
        length = weight.shape[axis]
        total += length
        permuted += _permuted(spec.axes[f"{name}.weight"][axis], length)
    return permuted / total
