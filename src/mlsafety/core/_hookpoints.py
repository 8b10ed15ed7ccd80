"""Named hook points on transformer models: one naming scheme mapped onto Llama, GPT-2 and BERT modules.

The names follow TransformerLens (Nanda and Bloom, "TransformerLens", 2022) without rewriting the model:
a table says which existing submodule holds each point, and a forward (pre-)hook reads or replaces the
tensor there. For a model with ``n`` blocks the points are, in the order the forward pass meets them::

    embed                  output of the token-embedding layer (N, L, D), before position embeddings
    blocks.{i}.resid_pre   residual stream entering block i (N, L, D)
    blocks.{i}.head_out    per-head attention outputs, the input of the attention output projection,
                           reshaped (N, L, H, d_head): exact, since the projection is linear
    blocks.{i}.attn_out    the attention sub-layer's contribution to the residual stream (N, L, D)
    blocks.{i}.mlp_out     the MLP sub-layer's contribution (N, L, D)
    blocks.{i}.resid_post  residual stream leaving block i (N, L, D) (= resid_pre of block i + 1)
    final_norm             output of the final norm (N, L, D) (Llama and GPT-2; BERT has none)

For BERT (post-norm), ``attn_out`` and ``mlp_out`` are the dense projections' outputs before the dropout,
the residual sum and the LayerNorm, and ``resid_pre`` of block 0 is the embedding block's output.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeAlias

import torch
from torch import nn

from mlsafety.core._errors import InputError, UnknownNameError

HookFn: TypeAlias = Callable[[torch.Tensor, str], "torch.Tensor | None"]
"""``fn(activation, name)``; returning a tensor of the same shape replaces the activation."""

BLOCK_POINTS = ("resid_pre", "head_out", "attn_out", "mlp_out", "resid_post")
_BLOCK_NAME = re.compile(r"blocks\.(\d+)\.(\w+)")


@dataclass(frozen=True)
class HookTable:
    """Where one architecture family keeps the modules behind the hook points.

    Paths are dotted submodule names. ``layers``, ``embed`` and ``final_norm`` are relative to the trunk
    (the first submodule that holds all three, e.g. ``model`` in a ``LlamaForCausalLM``); ``attn``,
    ``mlp``, ``attn_proj`` and ``head_dim`` are relative to one block.

    Args:
        family: a short name for messages (``"llama"``).
        layers: the ``nn.ModuleList`` of blocks.
        embed: the token-embedding module.
        attn: the module whose output (first element when a tuple) is ``attn_out``.
        mlp: the module whose output is ``mlp_out``.
        attn_proj: the attention output projection; its input is ``head_out``.
        head_dim: an attribute path giving the width of one head (the head count is the projection's
            input width divided by it).
        final_norm: the final norm, or None when the family has none.

    Example:
        >>> table = HookTable("mine", layers="blocks", embed="tok", attn="attn", mlp="ff",
        ...                   attn_proj="attn.out", head_dim="attn.d_head", final_norm="ln")
        >>> points = HookPoints(model, table=table)
    """

    family: str
    layers: str
    embed: str
    attn: str
    mlp: str
    attn_proj: str
    head_dim: str
    final_norm: str | None = None


LLAMA = HookTable(
    "llama",
    layers="layers",
    embed="embed_tokens",
    attn="self_attn",
    mlp="mlp",
    attn_proj="self_attn.o_proj",
    head_dim="self_attn.head_dim",
    final_norm="norm",
)
GPT2 = HookTable(
    "gpt2",
    layers="h",
    embed="wte",
    attn="attn",
    mlp="mlp",
    attn_proj="attn.c_proj",
    head_dim="attn.head_dim",
    final_norm="ln_f",
)
BERT = HookTable(
    "bert",
    layers="encoder.layer",
    embed="embeddings.word_embeddings",
    attn="attention.output.dense",
    mlp="output.dense",
    attn_proj="attention.output.dense",
    head_dim="attention.self.attention_head_size",
)
HOOK_TABLES: tuple[HookTable, ...] = (LLAMA, GPT2, BERT)
"""The known families, tried in this order (Llama-style covers Mistral, Qwen2, SmolLM and kin)."""


def _submodule(root: nn.Module, path: str) -> nn.Module | None:
    try:
        return root.get_submodule(path)
    except AttributeError:
        return None


def _attribute(root: Any, path: str) -> Any:
    for part in path.split("."):
        root = getattr(root, part, None)
    return root


def _matches(trunk: nn.Module, table: HookTable) -> bool:
    layers = _submodule(trunk, table.layers)
    if not isinstance(layers, nn.ModuleList) or len(layers) == 0 or _submodule(trunk, table.embed) is None:
        return False
    if table.final_norm is not None and _submodule(trunk, table.final_norm) is None:
        return False
    block = layers[0]
    parts = (table.attn, table.mlp, table.attn_proj)
    return all(_submodule(block, p) is not None for p in parts) and isinstance(_attribute(block, table.head_dim), int)


def find_trunk(module: nn.Module, tables: Sequence[HookTable] = HOOK_TABLES) -> tuple[str, HookTable]:
    """The dotted name of the trunk inside ``module`` and the table it matches.

    Raises:
        InputError: no submodule matches any of ``tables``; the message names the supported families and
            how to pass a custom :class:`HookTable`.
    """
    for table in tables:
        for name, sub in module.named_modules():
            if _matches(sub, table):
                return name, table
    families = ", ".join(t.family for t in tables)
    raise InputError(
        f"no hook-point table fits {type(module).__name__}: supported families are {families} "
        "(Llama-style, GPT-2, BERT); pass table=HookTable(...) naming its blocks, attention and MLP modules"
    )


class HookPoints:
    """The named hook points of one transformer model (see the module docstring for the names).

    Args:
        module: a Llama-style, GPT-2 or BERT model from ``transformers`` (any head), or any module holding
            one; or another architecture described by ``table``.
        table: where the points live; None detects the family from the module structure.

    Example:
        >>> points = HookPoints(model)
        >>> with points.hooks({"blocks.0.mlp_out": lambda act, name: torch.zeros_like(act)}):
        ...     logits = model(input_ids=ids).logits
    """

    def __init__(self, module: nn.Module, table: HookTable | None = None) -> None:
        if not isinstance(module, nn.Module):
            raise InputError(f"model must be a torch.nn.Module, got {type(module).__name__}")
        self.module = module
        prefix, self.table = find_trunk(module, [table] if table is not None else HOOK_TABLES)
        self.prefix = f"{prefix}." if prefix else ""
        self.trunk = module.get_submodule(prefix) if prefix else module
        layers = self.trunk.get_submodule(self.table.layers)
        assert isinstance(layers, nn.ModuleList)
        self.blocks = layers
        proj = self.blocks[0].get_submodule(self.table.attn_proj)
        self.d_head = int(_attribute(self.blocks[0], self.table.head_dim))
        width = _in_features(proj)
        if width % self.d_head:
            raise InputError(
                f"attention projection input width {width} is not a multiple of head_dim {self.d_head}: "
                "fix the table's head_dim"
            )
        self.n_heads = width // self.d_head

    @property
    def family(self) -> str:
        """The table's family name (``"llama"``, ``"gpt2"``, ``"bert"`` or a custom one)."""
        return self.table.family

    @property
    def n_layers(self) -> int:
        """The number of blocks."""
        return len(self.blocks)

    def names(self) -> list[str]:
        """Every hook point name, in the order the forward pass meets them."""
        names = ["embed"]
        for i in range(self.n_layers):
            names += [f"blocks.{i}.{point}" for point in BLOCK_POINTS]
        if self.table.final_norm is not None:
            names.append("final_norm")
        return names

    def module_name(self, name: str) -> str:
        """The dotted name (inside the model) of the module whose hook serves point ``name``."""
        return self.prefix + self._locate(name)[0]

    def _locate(self, name: str) -> tuple[str, str]:
        """``(module path relative to the trunk, kind)``; kind is input, output or heads."""
        table = self.table
        if name == "embed":
            return table.embed, "output"
        if name == "final_norm" and table.final_norm is not None:
            return table.final_norm, "output"
        match = _BLOCK_NAME.fullmatch(name)
        if match is not None and int(match[1]) < self.n_layers and match[2] in BLOCK_POINTS:
            block = f"{table.layers}.{int(match[1])}"
            return {
                "resid_pre": (block, "input"),
                "head_out": (f"{block}.{table.attn_proj}", "heads"),
                "attn_out": (f"{block}.{table.attn}", "output"),
                "mlp_out": (f"{block}.{table.mlp}", "output"),
                "resid_post": (block, "output"),
            }[match[2]]
        ends = "embed, " + ("final_norm, " if table.final_norm is not None else "")
        raise UnknownNameError(
            f"unknown hook point {name!r}: use {ends}or blocks.{{i}}.{{{'|'.join(BLOCK_POINTS)}}} "
            f"with i in [0, {self.n_layers}) (see hook_points())"
        )

    @contextlib.contextmanager
    def hooks(self, fns: Mapping[str, HookFn]) -> Iterator[None]:
        """Attach ``fn(activation, name)`` at each named point for the body; always removed on exit.

        A function that returns None only reads; one that returns a tensor of the activation's shape
        replaces it for the rest of the forward pass. ``head_out`` activations are ``(N, L, H, d_head)``.
        With functions that return None the model computes exactly what it computes without hooks.

        Raises:
            UnknownNameError: a name that is not in :meth:`names` (before anything is attached).
        """
        located = {name: self._locate(name) for name in fns}
        handles: list[torch.utils.hooks.RemovableHandle] = []
        try:
            for name, fn in fns.items():
                path, kind = located[name]
                target = self.trunk.get_submodule(path)
                if kind == "output":
                    handles.append(target.register_forward_hook(_output_hook(name, fn)))
                else:
                    heads = self.n_heads if kind == "heads" else None
                    handles.append(target.register_forward_pre_hook(_input_hook(name, fn, heads), with_kwargs=True))
            yield
        finally:
            for handle in handles:
                handle.remove()

    @contextlib.contextmanager
    def cache(
        self, names: Sequence[str], select: Callable[[torch.Tensor], torch.Tensor] | None = None
    ) -> Iterator[dict[str, list[torch.Tensor]]]:
        """Record the activations at ``names`` (detached copies) for the body; one list entry per forward.

        Args:
            names: hook point names.
            select: applied to each activation before it is stored (e.g. to keep some positions only).

        Yields:
            ``{name: [activation of forward pass 1, ...]}``, filled as the body runs.
        """
        store: dict[str, list[torch.Tensor]] = {name: [] for name in names}

        def record(act: torch.Tensor, name: str) -> None:
            kept = select(act) if select is not None else act
            store[name].append(kept.detach().clone())

        with self.hooks(dict.fromkeys(names, record)):
            yield store


def _in_features(proj: nn.Module) -> int:
    if isinstance(proj, nn.Linear):
        return proj.in_features
    weight = getattr(proj, "weight", None)
    if isinstance(weight, torch.Tensor) and weight.ndim == 2 and hasattr(proj, "nf"):
        return int(weight.shape[0])  # transformers' Conv1D stores (in, out)
    if isinstance(weight, torch.Tensor) and weight.ndim == 2:
        return int(weight.shape[1])
    raise InputError(f"cannot read the input width of {type(proj).__name__}: give the table an nn.Linear attn_proj")


def _checked(name: str, act: torch.Tensor, new: Any) -> torch.Tensor | None:
    if new is None:
        return None
    if not isinstance(new, torch.Tensor) or new.shape != act.shape:
        got = tuple(new.shape) if isinstance(new, torch.Tensor) else type(new).__name__
        raise InputError(
            f"hook at {name!r} returned {got}, not a tensor of shape {tuple(act.shape)}: "
            "return None or a tensor of that shape"
        )
    return new


def _output_hook(name: str, fn: HookFn) -> Callable[..., Any]:
    def hook(module: nn.Module, args: Any, output: Any) -> Any:
        act = output[0] if isinstance(output, tuple) else output
        new = _checked(name, act, fn(act, name))
        if new is None:
            return None
        return (new, *output[1:]) if isinstance(output, tuple) else new

    return hook


def _input_hook(name: str, fn: HookFn, heads: int | None) -> Callable[..., Any]:
    def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        act = args[0] if args else kwargs["hidden_states"]
        view = act.unflatten(-1, (heads, -1)) if heads is not None else act
        new = _checked(name, view, fn(view, name))
        if new is None:
            return None
        if heads is not None:
            new = new.flatten(-2)
        if args:
            return (new, *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": new}

    return hook
