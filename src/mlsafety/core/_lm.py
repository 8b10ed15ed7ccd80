"""The causal language-model adapter: batched continuation log-probabilities, hidden states, generation, hooks.

Every method tokenises through :func:`mlsafety.core.encode` and batches with padding; padding never
changes a number, because the attention mask hides the padding and the position ids count real tokens
only (``cumsum(mask) - 1``), so a left-padded text sees exactly the positions it would see alone.
"""

from __future__ import annotations

import contextlib
import inspect
import math
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Literal

import torch
from torch import nn

from mlsafety.core._errors import InputError
from mlsafety.core._hookpoints import HookFn, HookPoints, HookTable
from mlsafety.core._model import device_of, frozen, unwrap_logits
from mlsafety.core._progress import Progress, track
from mlsafety.core._text import Modality, TextBatch, Texts, encode, text_limit

PaddingSide = Literal["left", "right"]


def position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions counted over real tokens only, ``(N, L)``: 0 for the first real token, 0 on padding."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def _texts(texts: Sequence[str] | str, what: str) -> Texts:
    items = Texts(texts)  # refuses a bare str with one line
    if len(items) == 0:
        raise InputError(f"no {what} given; pass at least one string")
    for i, text in enumerate(items):
        if text == "":
            raise InputError(f"{what} {i} is empty; give every {what.rstrip('s')} some text")
    return items


def _check_batch_size(batch_size: int) -> None:
    if not isinstance(batch_size, int) or batch_size < 1:
        raise InputError(f"batch_size must be a positive integer, got {batch_size!r}")


class LanguageModel:
    """Adapter around a causal language model (any ``transformers`` ``*ForCausalLM`` or a module returning
    logits ``(N, L, V)``) and its tokenizer.

    Args:
        module: the model. It is called as ``module(input_ids=..., attention_mask=..., position_ids=...)``
            with the arguments its forward names; a module whose forward takes no ``attention_mask`` or no
            ``position_ids`` is always fed right-padded batches (and one prompt at a time when generating),
            the only layout under which a causal model ignores padding it cannot see.
        tokenizer: a ``transformers`` tokenizer; None: ``module.tokenizer``.
        max_length: tokens per text at most (special tokens included); None: the smaller of the tokenizer's
            limit and the model config's ``max_position_embeddings`` (either when only one is stated). A
            text over it is refused (scoring a cut text would give a wrong number).
        padding_side: padding for scoring and hidden states; None: the tokenizer's. Generation always
            pads on the left.
        table: where the hook points live (see :class:`~mlsafety.core.HookTable`); None: detect Llama-style,
            GPT-2 or BERT models from their structure when hooks are first used.

    Example:
        >>> lm = LanguageModel(model, tokenizer)
        >>> lm.logprobs(["The capital of France is"], [" Paris"])
        tensor([-0.26])
    """

    modality: Modality = "text"

    def __init__(
        self,
        module: nn.Module,
        tokenizer: Any = None,
        max_length: int | None = None,
        padding_side: PaddingSide | None = None,
        table: HookTable | None = None,
    ) -> None:
        if not isinstance(module, nn.Module):
            raise InputError(f"model must be a torch.nn.Module, got {type(module).__name__}")
        self.module = module
        tokenizer = tokenizer if tokenizer is not None else getattr(module, "tokenizer", None)
        if tokenizer is None:
            raise InputError("a language model needs its tokenizer: pass tokenizer= (or set module.tokenizer)")
        self.tokenizer: Any = tokenizer
        if max_length is not None and (not isinstance(max_length, int) or max_length < 2):
            raise InputError(f"max_length must be an integer of at least 2 tokens, got {max_length!r}")
        if padding_side not in (None, "left", "right"):
            raise InputError(f"padding_side must be 'left', 'right' or None, got {padding_side!r}")
        # None: the smaller of the tokenizer's limit and the model's positions (SmolLM2's tokenizer states none)
        self.max_length: int | None = max_length if max_length is not None else text_limit(tokenizer, module)
        params = inspect.signature(module.forward).parameters
        self._takes = {
            name for name in ("input_ids", "attention_mask", "position_ids", "past_key_values") if name in params
        }
        masked = {"attention_mask", "position_ids"} <= self._takes
        side = padding_side or getattr(self.tokenizer, "padding_side", None) or "right"
        self.padding_side: PaddingSide = side if masked else "right"
        self._table = table
        self._points: HookPoints | None = None

    # ------------------------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return device_of(self.module)

    @property
    def points(self) -> HookPoints:
        """The model's :class:`~mlsafety.core.HookPoints` (built on first use)."""
        if self._points is None:
            self._points = HookPoints(self.module, table=self._table)
        return self._points

    @property
    def n_layers(self) -> int:
        """The number of transformer blocks."""
        return self.points.n_layers

    def encode(self, texts: Sequence[str], padding_side: PaddingSide | None = None) -> TextBatch:
        """Token ids of ``texts`` as this adapter feeds them to the model (its max length and padding side)."""
        return encode(self.tokenizer, _texts(texts, "texts"), self.max_length, padding_side or self.padding_side)

    def _encode_whole(
        self, texts: Sequence[str], side: PaddingSide, what: str, index: Sequence[int] | None = None
    ) -> TextBatch:
        """:func:`encode` refusing truncation; ``index`` maps batch rows to the caller's numbering."""
        batch = encode(self.tokenizer, texts, self.max_length, side)
        if bool(batch.truncated.any()):
            row = int(batch.truncated.nonzero()[0])
            i = index[row] if index is not None else row
            raise InputError(
                f"{what} {i} is longer than max_length={self.max_length or 'the tokenizer limit'} tokens; "
                "shorten it or pass a larger max_length"
            )
        return batch

    def _logits(self, batch: TextBatch) -> tuple[torch.Tensor, Any]:
        """One forward pass: ``(logits (N, L, V), raw output)``."""
        batch = batch.to(self.device)
        kwargs: dict[str, Any] = {}
        if "attention_mask" in self._takes:
            kwargs["attention_mask"] = batch.attention_mask
        if "position_ids" in self._takes:
            kwargs["position_ids"] = position_ids(batch.attention_mask)
        if "input_ids" in self._takes:
            output = self.module(input_ids=batch.input_ids, **kwargs)
        else:
            output = self.module(batch.input_ids, **kwargs)
        return _sequence_logits(output, batch.input_ids), output

    # ------------------------------------------------------------------------------------------
    def token_logprobs(
        self,
        prompts: Sequence[str],
        continuations: Sequence[str],
        batch_size: int = 16,
        progress: Progress | None = None,
    ) -> list[torch.Tensor]:
        """Log-probability of each token of each continuation given its prompt: a list of ``(T_i,)`` tensors.

        Tokenisation (as in the LM Evaluation Harness, Gao et al. 2021): whitespace at the end of a prompt
        moves to the start of its continuation; ``prompt`` and ``prompt + continuation`` are tokenised
        alike (special tokens included) and the continuation's tokens are those of the whole text after
        the prompt's tokens, so the model scores the continuation as it would see it in running text
        (``" Paris"`` is the single token ``"ĠParis"`` for a GPT-2-style tokenizer). A prompt whose tokens
        are not a prefix of the whole text's (a token spanning the boundary, or a tokenizer that appends a
        token at the end) is refused.

        Args:
            prompts: N non-empty strings.
            continuations: N non-empty strings.
            batch_size: texts per forward pass (texts are sorted by length first to pad little).
            progress: shows a bar over the batches; None: silent.

        Returns:
            N float32 CPU tensors, natural-log probabilities; their sums are :meth:`logprobs`.

        Raises:
            InputError: empty or mismatched lists, an empty string, a text over the maximum length, a
                prompt/continuation boundary inside a token.
        """
        _check_batch_size(batch_size)
        prompts_t = _texts(prompts, "prompts")
        conts_t = _texts(continuations, "continuations")
        if len(prompts_t) != len(conts_t):
            raise InputError(f"{len(prompts_t)} prompts but {len(conts_t)} continuations; give one continuation each")
        pairs: list[tuple[str, str]] = []
        for i, (prompt, cont) in enumerate(zip(prompts_t, conts_t)):
            stripped = prompt.rstrip()
            if not stripped:
                raise InputError(f"prompt {i} is only whitespace; give every prompt some text")
            pairs.append((stripped, prompt[len(stripped) :] + cont))
        order = sorted(range(len(pairs)), key=lambda i: -len(pairs[i][0]) - len(pairs[i][1]))
        result: list[torch.Tensor] = [torch.empty(0)] * len(pairs)
        side = self.padding_side
        with frozen(self.module), torch.no_grad():
            for start in track(range(0, len(order), batch_size), progress, "scoring continuations"):
                index = order[start : start + batch_size]
                whole = self._encode_whole(
                    [pairs[i][0] + pairs[i][1] for i in index], side, "prompt+continuation", index
                )
                head = encode(self.tokenizer, [pairs[i][0] for i in index], self.max_length, side)
                n_prompt = self._check_prefix(head, whole, index)
                logits, _ = self._logits(whole)
                width = whole.shape[1]
                n_whole = whole.lengths
                first = (width - n_whole if side == "left" else torch.zeros_like(n_whole)).to(logits.device)
                # target t (a continuation token) is predicted at position t - 1
                lo = (first + n_prompt.to(logits.device) - 1)[:, None]
                hi = (first + n_whole.to(logits.device) - 1)[:, None]
                pos = torch.arange(width - 1, device=logits.device)[None, :]
                scored = (pos >= lo) & (pos < hi)  # (n, L - 1), row-major: each text's tokens in order
                targets = whole.input_ids[:, 1:].to(logits.device)[scored]
                picked = _logprobs_of(logits[:, :-1][scored], targets).cpu()
                counts = (n_whole - n_prompt).tolist()
                for i, part in zip(index, picked.split(counts)):
                    result[i] = part
        return result

    def _check_prefix(self, head: TextBatch, whole: TextBatch, index: list[int]) -> torch.Tensor:
        n_prompt, n_whole = head.lengths, whole.lengths
        for row, i in enumerate(index):
            p, w = int(n_prompt[row]), int(n_whole[row])
            p_ids = head.input_ids[row][head.attention_mask[row].bool()]
            w_ids = whole.input_ids[row][whole.attention_mask[row].bool()]
            if w <= p or not torch.equal(p_ids, w_ids[:p]):
                raise InputError(
                    f"prompt {i}'s tokens are not followed by continuation tokens in prompt+continuation "
                    "(a token spans the boundary, the continuation adds no token, or the tokenizer appends a "
                    "special token): split prompt and continuation at a word boundary"
                )
        return n_prompt

    def logprobs(
        self,
        prompts: Sequence[str],
        continuations: Sequence[str],
        batch_size: int = 16,
        progress: Progress | None = None,
    ) -> torch.Tensor:
        """Summed log p(continuation | prompt) for each pair, ``(N,)`` float32 on CPU.

        The scoring primitive of multiple-choice evaluations; see :meth:`token_logprobs` for how text
        is split into tokens.

        Example:
            >>> lm.logprobs(["The capital of France is"] * 2, [" Paris", " Rome"])
        """
        parts = self.token_logprobs(prompts, continuations, batch_size, progress)
        return torch.stack([part.sum() for part in parts])

    # ------------------------------------------------------------------------------------------
    def hidden_states(
        self,
        texts: Sequence[str],
        layers: Sequence[int] | None = None,
        positions: int | Sequence[int] = -1,
        batch_size: int = 16,
        progress: Progress | None = None,
    ) -> torch.Tensor:
        """The residual stream at chosen token positions after the embeddings and after each block.

        Index 0 is the stream entering block 0 (``blocks.0.resid_pre``), index ``i + 1`` the stream
        leaving block i (``blocks.{i}.resid_post``), so every entry is taken before the final norm (where
        ``transformers``' ``output_hidden_states`` normalises its last entry). One forward pass per batch;
        hooks keep only the chosen positions.

        Args:
            texts: N non-empty strings.
            layers: indices into ``0 .. n_layers`` (negative counts from the end); None: all of them.
            positions: token positions counted over real tokens: negative from the last one (-1 is the
                last token), non-negative from the first (0 is the first token, a BOS when the tokenizer
                adds one); one int or a sequence.
            batch_size: texts per forward pass.
            progress: shows a bar over the batches; None: silent.

        Returns:
            float tensor on CPU, ``(N, n_layers_chosen, D)`` for one position, ``(N, n_layers_chosen, P, D)``
            for a sequence of P positions.

        Raises:
            InputError: a layer or position out of range for some text (the message names it).
        """
        _check_batch_size(batch_size)
        items = _texts(texts, "texts")
        points = self.points
        n_stream = points.n_layers + 1
        chosen = list(range(n_stream)) if layers is None else [int(k) for k in layers]
        for k in chosen:
            if not -n_stream <= k < n_stream:
                raise InputError(f"layer {k} is out of range: this model has layers 0..{n_stream - 1} (0 = embeddings)")
        chosen = [k % n_stream for k in chosen]
        if not chosen:
            raise InputError("layers is empty; pass None for all layers or a list of layer indices")
        single = isinstance(positions, int)
        wanted = [positions] if isinstance(positions, int) else [int(p) for p in positions]
        if not wanted:
            raise InputError("positions is empty; pass an int or a list of token positions")
        names = {k: "blocks.0.resid_pre" if k == 0 else f"blocks.{k - 1}.resid_post" for k in set(chosen)}
        pos_t = torch.tensor(wanted)
        index: dict[str, torch.Tensor] = {}

        def select(act: torch.Tensor) -> torch.Tensor:  # (n, L, D) -> (n, P, D)
            rows = index["rows"].to(act.device)
            return act[rows[:, :, 0], rows[:, :, 1]]

        out: list[torch.Tensor] = []
        side = self.padding_side
        with frozen(self.module), torch.no_grad():
            for start in track(range(0, len(items), batch_size), progress, "hidden states"):
                chunk = items[start : start + batch_size]
                batch = self._encode_whole(chunk, side, "text", range(start, start + len(chunk)))
                n_real = batch.lengths
                first = batch.shape[1] - n_real if side == "left" else torch.zeros_like(n_real)
                rel = torch.where(pos_t[None, :] < 0, n_real[:, None] + pos_t[None, :], pos_t[None, :])
                bad = (rel < 0) | (rel >= n_real[:, None])
                if bool(bad.any()):
                    row, col = (int(v) for v in bad.nonzero()[0])
                    raise InputError(
                        f"position {wanted[col]} is outside text {start + row}, which has {int(n_real[row])} tokens; "
                        "choose positions every text has"
                    )
                rows = torch.arange(len(chunk))[:, None].expand(-1, len(wanted))
                index["rows"] = torch.stack([rows, first[:, None] + rel], dim=-1)
                with points.cache(list(names.values()), select=select) as store:
                    self._logits(batch)
                out.append(torch.stack([store[names[k]][0] for k in chosen], dim=1).float().cpu())
        states = torch.cat(out)  # (N, layers, P, D)
        return states[:, :, 0] if single else states

    # ------------------------------------------------------------------------------------------
    def generate(
        self,
        prompts: Sequence[str],
        max_new_tokens: int = 32,
        temperature: float = 0.0,
        top_k: int | None = None,
        generator: torch.Generator | None = None,
        batch_size: int = 16,
        progress: Progress | None = None,
    ) -> list[str]:
        """Continue each prompt: greedy when ``temperature`` is 0, else sampled with ``generator``.

        Batched with left padding and a key/value cache when the model offers one (``past_key_values``),
        else the whole sequence is recomputed each step. A sequence stops at an end-of-sequence token
        (the tokenizer's and the model's ``generation_config`` ones) or after ``max_new_tokens``.

        Args:
            prompts: N non-empty strings.
            max_new_tokens: tokens to add at most.
            temperature: 0 for greedy decoding; > 0 divides the logits before sampling.
            top_k: sample among the k most likely tokens only; None: all.
            generator: the ``torch.Generator`` every draw uses (required when sampling); the same seed,
                prompts and batch size give the same texts.
            batch_size: prompts decoded together.
            progress: shows a bar over the batches; None: silent.

        Returns:
            N strings: the generated continuations only (without the prompts, end token and special tokens).
        """
        _check_batch_size(batch_size)
        items = _texts(prompts, "prompts")
        if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
            raise InputError(f"max_new_tokens must be a positive integer, got {max_new_tokens!r}")
        if not isinstance(temperature, (int, float)) or not math.isfinite(temperature) or temperature < 0:
            raise InputError(f"temperature must be a finite number >= 0, got {temperature!r}")
        if top_k is not None and (not isinstance(top_k, int) or top_k < 1):
            raise InputError(f"top_k must be a positive integer or None, got {top_k!r}")
        if temperature > 0 and generator is None:
            raise InputError(
                "sampling (temperature > 0) needs generator=: pass torch.Generator().manual_seed(seed) "
                "or mlsafety.core.generator(seed, name)"
            )
        padded = {"attention_mask", "position_ids"} <= self._takes
        size = batch_size if padded else 1
        stops = self._stop_ids()
        texts: list[str] = []
        with frozen(self.module), torch.no_grad():
            for start in track(range(0, len(items), size), progress, "generating"):
                batch = self._encode_whole(items[start : start + size], "left", "prompt", range(start, start + size))
                self._check_room(batch.shape[1] + max_new_tokens)
                new = self._decode(batch, max_new_tokens, temperature, top_k, generator, stops)
                for row in new.tolist():
                    end = next((j for j, t in enumerate(row) if t in stops), len(row))
                    texts.append(self.tokenizer.decode(row[:end], skip_special_tokens=True))
        return texts

    def _stop_ids(self) -> set[int]:
        stops: set[int] = set()
        config = getattr(self.module, "generation_config", None)
        for value in (getattr(self.tokenizer, "eos_token_id", None), getattr(config, "eos_token_id", None)):
            if isinstance(value, int):
                stops.add(value)
            elif isinstance(value, (list, tuple)):
                stops.update(int(v) for v in value)
        return stops

    def _check_room(self, total: int) -> None:
        config = getattr(self.module, "config", None)
        limit = getattr(config, "max_position_embeddings", None)
        if isinstance(limit, int) and total > limit:
            raise InputError(
                f"prompt plus max_new_tokens is {total} tokens, over the model's {limit} positions; "
                "shorten the prompt or lower max_new_tokens"
            )

    def _decode(
        self,
        batch: TextBatch,
        max_new_tokens: int,
        temperature: float,
        top_k: int | None,
        generator: torch.Generator | None,
        stops: set[int],
    ) -> torch.Tensor:
        """The new token ids ``(n, T)`` (after a stop token, rows hold that stop token)."""
        device = self.device
        ids, mask = batch.input_ids.to(device), batch.attention_mask.to(device)
        use_cache = {"past_key_values", "attention_mask", "position_ids"} <= self._takes
        stop_t = torch.tensor(sorted(stops), dtype=torch.long, device=device)
        done = torch.zeros(len(batch), dtype=torch.bool, device=device)
        past: Any = None
        new: list[torch.Tensor] = []
        step_ids = ids
        for _ in range(max_new_tokens):
            if use_cache:
                step_pos = position_ids(mask)[:, -step_ids.shape[1] :]
                output = self.module(
                    input_ids=step_ids, attention_mask=mask, position_ids=step_pos, past_key_values=past, use_cache=True
                )
                past = output.past_key_values
                logits = _sequence_logits(output, step_ids)[:, -1]
            else:
                logits, _ = self._logits(TextBatch(ids, mask, torch.zeros(len(batch), dtype=torch.bool)))
                logits = logits[:, -1]
            token = _choose(logits.float(), temperature, top_k, generator).to(device)
            fill = stop_t[0] if len(stop_t) else token.new_tensor(0)
            token = torch.where(done, fill, token)
            new.append(token)
            done |= torch.isin(token, stop_t)
            ids = torch.cat([ids, token[:, None]], dim=1)
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
            step_ids = token[:, None]
            if bool(done.all()):
                break
        return torch.stack(new, dim=1).cpu()

    # ------------------------------------------------------------------------------------------
    def hook_points(self) -> list[str]:
        """Every hook point name (``embed``, ``blocks.{i}.resid_pre|head_out|attn_out|mlp_out|resid_post``,
        ``final_norm``), in forward order."""
        return self.points.names()

    @contextlib.contextmanager
    def hooks(self, fns: Mapping[str, HookFn]) -> Iterator[LanguageModel]:
        """Attach ``fn(activation, name)`` at named hook points for the body (see :meth:`HookPoints.hooks`).

        Example:
            >>> with lm.hooks({"blocks.3.attn_out": lambda act, name: act * 0}):
            ...     ablated = lm.logprobs(prompts, answers)
        """
        with self.points.hooks(fns):
            yield self

    def run_with_cache(
        self, texts: Sequence[str] | TextBatch, names: Sequence[str]
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """One forward pass over ``texts`` (one padded batch) recording the activations at ``names``.

        Args:
            texts: strings (tokenised by :meth:`encode`) or a :class:`~mlsafety.core.TextBatch`; the
                activations line up with ``lm.encode(texts)`` token by token, padding included.
            names: hook point names (see :meth:`hook_points`).

        Returns:
            ``(logits (N, L, V), {name: activation})``, detached, on the model's device.
        """
        batch = (
            texts
            if isinstance(texts, TextBatch)
            else self._encode_whole(_texts(texts, "texts"), self.padding_side, "text")
        )
        with frozen(self.module), torch.no_grad(), self.points.cache(list(names)) as store:
            logits, _ = self._logits(batch)
        return logits, {name: store[name][0] for name in names}


def _sequence_logits(output: Any, input_ids: torch.Tensor) -> torch.Tensor:
    """The logits ``(N, L, V)`` in a forward's output, refusing a classifier's ``(N, K)``."""
    logits = unwrap_logits(output)
    if logits.ndim != 3 or logits.shape[:2] != input_ids.shape:
        n, length = input_ids.shape
        raise InputError(
            f"a language model must return logits (N, L, V) = ({n}, {length}, V), got {tuple(logits.shape)}: "
            "pass a causal LM, not a classifier"
        )
    return logits


def _logprobs_of(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log p(target) under each row of ``logits`` ``(K, V)``: ``(K,)`` float32.

    Only the scored positions reach here, so the (K, V) log-softmax stays small. ``log_softmax`` is
    what an unbatched reference computes; ``gather(logits) - logsumexp(logits)`` differed from it by up
    to 5e-5 on SmolLM2.
    """
    return logits.float().log_softmax(-1).gather(-1, targets[:, None])[:, 0]


def _choose(
    logits: torch.Tensor, temperature: float, top_k: int | None, generator: torch.Generator | None
) -> torch.Tensor:
    """The next token per row ``(n,)``: argmax, or a draw from the tempered (top-k) distribution."""
    if temperature == 0:
        return logits.argmax(-1)
    scaled = logits / temperature
    if top_k is not None and top_k < scaled.shape[-1]:
        kth = scaled.topk(top_k, dim=-1).values[:, -1:]
        scaled = scaled.masked_fill(scaled < kth, float("-inf"))
    probs = scaled.softmax(-1)
    assert generator is not None
    return torch.multinomial(probs.to(generator.device), 1, generator=generator)[:, 0]
