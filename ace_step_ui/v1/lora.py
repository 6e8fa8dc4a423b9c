"""LoRA adapters on the ACE-Step v1 transformer, with the arithmetic of upstream's diffusers + peft path.

Upstream loads `pytorch_lora_weights.safetensors` (the `save_lora_adapter` format: peft key names
without a prefix, e.g. `transformer_blocks.0.attn.to_q.lora_A.weight`) with diffusers 0.33's
`load_lora_adapter` and activates it at `lora_weight`. That diffusers version does not read the
adapter's alpha, so peft gets `lora_alpha = r` and the effective scale is exactly the weight:
`out = base(x) + weight · B(A(x))`. We do the same without peft: each targeted `nn.Linear` is
replaced by a `LoRALinear` that keeps the base parameters under their own names (`to_q.weight`,
`to_q.bias`) and adds `lora_A` / `lora_B` next to them, so the model's state-dict keys for the
adapter are the file's keys, and forward hooks on `to_q` see the adapted output as they do upstream.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import Tensor, nn

from ..errors import InputError
from ..hub import lora_file
from .transformer import is_training_only

LORA_WEIGHTS_NAME = "pytorch_lora_weights.safetensors"
LORA_SUFFIXES = (".lora_A.weight", ".lora_B.weight", ".lora_B.bias")


# Finding the file -------------------------------------------------------------------------------


def lora_weights_path(name_or_path: str) -> Path:
    """The LoRA file for a folder holding `pytorch_lora_weights.safetensors`, the file itself, or a
    Hugging Face repo id (downloaded into the Hub cache; upstream used the checkpoint folder as cache)."""
    return lora_file(name_or_path, (LORA_WEIGHTS_NAME,))


def load_lora_weights(path: Path | str, device: torch.device | str = "cpu") -> dict[str, Tensor]:
    """The tensors of a LoRA safetensors file."""
    from safetensors.torch import load_file

    return load_file(str(path), device=str(device))


# The adapted layer --------------------------------------------------------------------------------


class LoRALinear(nn.Module):
    """A `nn.Linear` plus a low-rank update: base(x) + scale · lora_B(lora_A(x)), as peft's `lora.Linear`.

    `weight` and `bias` are the base layer's own parameters, so their state-dict keys do not change.
    """

    def __init__(self, base: nn.Linear, lora_A: Tensor, lora_B: Tensor, lora_B_bias: Tensor | None,
                 scale: float):
        super().__init__()
        self.in_features, self.out_features = base.in_features, base.out_features
        self.register_parameter("weight", base.weight)
        self.register_parameter("bias", base.bias)
        rank = lora_A.shape[0]
        # The adapter takes the base layer's dtype and device, as peft's `inject_adapter_in_model`
        # (diffusers' path) does; it does not upcast half precision the way `get_peft_model` would.
        dtype, device = base.weight.dtype, base.weight.device
        self.lora_A = linear_from(lora_A, None, dtype, device)
        self.lora_B = linear_from(lora_B, lora_B_bias, dtype, device)
        self.rank = rank
        self.scale = scale
        # The original module, outside the module tree (no state-dict keys), to give back on removal.
        object.__setattr__(self, "base_layer", base)

    def forward(self, x: Tensor) -> Tensor:
        result = nn.functional.linear(x, self.weight, self.bias)
        # peft's order: base output, input cast to the adapter dtype, delta scaled after lora_B.
        delta = self.lora_B(self.lora_A(x.to(self.lora_A.weight.dtype)))
        return (result + delta * self.scale).to(result.dtype)

    def unwrap(self) -> nn.Linear:
        base = self.base_layer
        base.weight, base.bias = self.weight, self.bias  # follow any .to() applied while wrapped
        return base

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"rank={self.rank}, scale={self.scale}")


def linear_from(weight: Tensor, bias: Tensor | None, dtype: torch.dtype,
                device: torch.device) -> nn.Linear:
    """A `nn.Linear` holding the given values (built on meta: nothing is initialised twice)."""
    layer = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, device="meta")
    layer.weight = nn.Parameter(weight.detach().to(device=device, dtype=dtype), requires_grad=False)
    if bias is not None:
        layer.bias = nn.Parameter(bias.detach().to(device=device, dtype=dtype), requires_grad=False)
    return layer


# Applying and removing ----------------------------------------------------------------------------


def apply_lora(model: nn.Module, weights: dict[str, Tensor], scale: float) -> None:
    """Wrap every `nn.Linear` the LoRA names (replacing any LoRA already applied), at `scale`.

    Strict: every key must be `<layer>.lora_A.weight` / `.lora_B.weight` (optionally `.lora_B.bias`)
    of a linear layer of `model` with matching shapes; otherwise nothing is changed and the
    `InputError` names the offending keys. The file's alpha is not read (see the module docstring).
    """
    check_scale(scale)
    targets, problems = lora_targets(model, weights)
    if problems:
        shown = problems[:8] + ([f"... and {len(problems) - 8} more"] if len(problems) > 8 else [])
        raise InputError("the LoRA does not fit this model: " + "; ".join(shown))
    remove_lora(model)
    for name, base in targets.items():
        layer = LoRALinear(base, weights[f"{name}.lora_A.weight"], weights[f"{name}.lora_B.weight"],
                           weights.get(f"{name}.lora_B.bias"), float(scale))
        replace_module(model, name, layer)


def lora_targets(model: nn.Module, weights: dict[str, Tensor]) -> tuple[dict[str, nn.Linear], list[str]]:
    """The linear layers a LoRA state dict adapts, by name, and what does not fit."""
    problems: list[str] = []
    names: dict[str, None] = {}
    for key in weights:
        suffix = next((s for s in LORA_SUFFIXES if key.endswith(s)), None)
        if suffix is None:
            problems.append(f"unexpected key {key}")
        else:
            names.setdefault(key[: -len(suffix)], None)
    targets: dict[str, nn.Linear] = {}
    for name in names:
        if is_training_only(f"{name}."):
            continue  # a layer inference never runs (and does not build): nothing to adapt
        lora_A, lora_B = weights.get(f"{name}.lora_A.weight"), weights.get(f"{name}.lora_B.weight")
        if lora_A is None or lora_B is None:
            problems.append(f"{name} lacks its lora_{'A' if lora_A is None else 'B'}.weight")
            continue
        module = find_module(model, name)
        base = module.base_layer if isinstance(module, LoRALinear) else module
        if base is None:
            problems.append(f"no layer named {name}")
            continue
        if not isinstance(base, nn.Linear):
            problems.append(f"{name} is a {type(base).__name__}, not a linear layer")
            continue
        bias = weights.get(f"{name}.lora_B.bias")
        if (lora_A.dim() != 2 or lora_B.dim() != 2 or lora_A.shape[1] != base.in_features
                or lora_B.shape != (base.out_features, lora_A.shape[0])
                or (bias is not None and bias.shape != (base.out_features,))):
            problems.append(f"{name}: lora_A {tuple(lora_A.shape)} / lora_B {tuple(lora_B.shape)} do not "
                            f"fit a {base.in_features}->{base.out_features} layer")
            continue
        targets[name] = base
    return targets, problems


def find_module(model: nn.Module, name: str) -> nn.Module | None:
    try:
        return model.get_submodule(name)
    except AttributeError:
        return None


def replace_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)


def remove_lora(model: nn.Module) -> None:
    """Put the plain `nn.Linear` layers back (a no-op without a LoRA)."""
    wrapped = [(name, module) for name, module in model.named_modules() if isinstance(module, LoRALinear)]
    for name, module in wrapped:
        replace_module(model, name, module.unwrap())


def set_lora_scale(model: nn.Module, scale: float) -> None:
    """Change the scale (upstream's `lora_weight`) of the applied LoRA."""
    check_scale(scale)
    for module in model.modules():
        if isinstance(module, LoRALinear):
            module.scale = float(scale)


def check_scale(scale: float) -> None:
    if not math.isfinite(float(scale)):
        raise InputError(f"the LoRA weight must be a finite number, not {scale}")
