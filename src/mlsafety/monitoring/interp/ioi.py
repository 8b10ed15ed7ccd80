"""Indirect-object-identification (IOI) prompts and their ABC corruption, seeded, checked against a tokenizer.

Wang, Variengien, Conmy, Shlegeris and Steinhardt, "Interpretability in the Wild: a Circuit for Indirect
Object Identification in GPT-2 small", 2022. A clean prompt names two people, mentions one of them again
(the subject S) and stops where the other one (the indirect object IO) is the natural next word::

    Then, John and Mary went to the store. Mary gave a drink to      -> " John" (IO), not " Mary" (S)

The order of the first two names is ABBA (IO first) or BABA (S first). The ABC corruption fills the same
template with three other names (``Then, Tom and Kate went to the store. Sid gave a drink to``), so the
prompt keeps its grammar but no longer says who the indirect object is (Wang et al., section 3.3).

Departures from the paper: the templates are fifteen of Wang et al.'s (their ``BABA_TEMPLATES`` with both
name orders); the name, place and object lists are shorter and are filtered against the tokenizer at hand
(a word must be ONE token when it follows a space), so the same code serves SmolLM2's BPE and a test's
word-level tokenizer; the three ABC names differ from each other and from the prompt's IO and S.
"""

from __future__ import annotations

import string
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch

from mlsafety.core import InputError, LanguageModel, encode, generator
from mlsafety.monitoring.interp._common import single_token

Order = Literal["ABBA", "BABA"]

TEMPLATES: tuple[str, ...] = (
    "Then, {A} and {B} went to the {PLACE}. {C} gave a {OBJECT} to",
    "Then, {A} and {B} had a lot of fun at the {PLACE}. {C} gave a {OBJECT} to",
    "Then, {A} and {B} were working at the {PLACE}. {C} decided to give a {OBJECT} to",
    "Then, {A} and {B} were thinking about going to the {PLACE}. {C} wanted to give a {OBJECT} to",
    "Then, {A} and {B} had a long argument, and afterwards {C} said to",
    "After {A} and {B} went to the {PLACE}, {C} gave a {OBJECT} to",
    "When {A} and {B} got a {OBJECT} at the {PLACE}, {C} decided to give it to",
    "When {A} and {B} got a {OBJECT} at the {PLACE}, {C} decided to give the {OBJECT} to",
    "While {A} and {B} were working at the {PLACE}, {C} gave a {OBJECT} to",
    "While {A} and {B} were commuting to the {PLACE}, {C} gave a {OBJECT} to",
    "After the lunch, {A} and {B} went to the {PLACE}. {C} gave a {OBJECT} to",
    "Afterwards, {A} and {B} went to the {PLACE}. {C} gave a {OBJECT} to",
    "Then, {A} and {B} had a long argument. Afterwards {C} said to",
    "The {PLACE} {A} and {B} went to had a {OBJECT}. {C} gave it to",
    "Friends {A} and {B} found a {OBJECT} at the {PLACE}. {C} gave it to",
)
"""Wang et al.'s templates: ``{A}`` and ``{B}`` are the first two names, ``{C}`` the second mention."""

NAMES: tuple[str, ...] = (
    "Michael", "Christopher", "Jessica", "Matthew", "Ashley", "Jennifer", "Joshua", "Amanda", "Daniel",
    "David", "James", "Robert", "John", "Joseph", "Andrew", "Ryan", "Brandon", "Jason", "Justin", "Sarah",
    "William", "Jonathan", "Stephanie", "Brian", "Nicole", "Nicholas", "Anthony", "Heather", "Eric",
    "Elizabeth", "Adam", "Megan", "Melissa", "Kevin", "Steven", "Thomas", "Timothy", "Christina", "Kyle",
    "Rachel", "Laura", "Lauren", "Amber", "Brittany", "Danielle", "Richard", "Kimberly", "Jeffrey", "Amy",
    "Crystal", "Michelle", "Tiffany", "Jeremy", "Benjamin", "Mark", "Emily", "Aaron", "Charles", "Rebecca",
    "Jacob", "Stephen", "Patrick", "Sean", "Erin", "Jamie", "Kelly", "Samantha", "Nathan", "Sara", "Dustin",
    "Paul", "Angela", "Tyler", "Scott", "Katherine", "Andrea", "Gregory", "Erica", "Mary", "Travis", "Lisa",
    "Kenneth", "Bryan", "Lindsey", "Kristen", "Jose", "Alexander", "Jesse", "Katie", "Lindsay", "Shannon",
    "Vanessa", "Courtney", "Christine", "Alicia", "Cody", "Allison", "Bradley", "Samuel", "Tom", "Kate",
    "Anna", "Alex", "Martin", "Rose", "Dan", "Sid",
)  # fmt: skip
"""Candidate names (Wang et al.'s list, shortened); those that are not one token after a space are dropped."""

PLACES: tuple[str, ...] = (
    "store", "garden", "restaurant", "school", "hospital", "office", "house", "station", "park", "beach",
)  # fmt: skip
OBJECTS: tuple[str, ...] = (
    "ring", "kiss", "bone", "basketball", "computer", "necklace", "drink", "snack", "book", "letter",
)  # fmt: skip

POSITIONS = ("IO", "S1", "S2", "END")
"""The named token positions of every prompt (counted over its real tokens, 0 = the first)."""


@dataclass(frozen=True)
class IOIDataset:
    """Clean IOI prompts, their ABC corruptions and where the names sit.

    Attributes:
        prompts: N clean prompts, each ending just before the indirect object.
        corrupted: N ABC prompts: the same template, place and object with three other names; each has the
            token length of its clean prompt.
        io_ids: ``(N,)`` int64, the token of ``" " + IO`` (the right answer).
        s_ids: ``(N,)`` int64, the token of ``" " + S`` (the wrong answer).
        io_names: the N indirect objects.
        s_names: the N subjects.
        positions: ``{"IO", "S1", "S2", "END"}`` -> ``(N,)`` int64 token positions, counted over the real
            tokens of the prompt as the tokenizer encodes it (special tokens included; 0 = the first token,
            so add the padding offset of a left-padded batch); the same in the corrupted prompt.
        lengths: ``(N,)`` int64 token counts (clean = corrupted).
        templates: the template index of each prompt (into :data:`TEMPLATES` or the caller's list).
        orders: ``"ABBA"`` (IO named first) or ``"BABA"`` per prompt.
        template_texts: the templates ``templates`` indexes.
        vocabulary: the single-token names, places and objects the prompts were drawn from (so that a
            separate reference sample can be drawn from the same distribution).
    """

    prompts: list[str]
    corrupted: list[str]
    io_ids: torch.Tensor
    s_ids: torch.Tensor
    io_names: list[str]
    s_names: list[str]
    positions: dict[str, torch.Tensor]
    lengths: torch.Tensor
    templates: list[int]
    orders: list[Order]
    template_texts: tuple[str, ...] = TEMPLATES
    vocabulary: tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]] | None = None

    def __len__(self) -> int:
        return len(self.prompts)


def _tokenizer_of(model_or_tokenizer: Any) -> Any:
    return model_or_tokenizer.tokenizer if isinstance(model_or_tokenizer, LanguageModel) else model_or_tokenizer


def single_token_id(tokenizer: Any, word: str) -> int | None:
    """The token id of ``" " + word`` when it is one token (and not the unknown token), else None.

    Through :func:`~mlsafety.monitoring.interp._common.single_token`, the package's one such test.
    """
    return single_token(tokenizer, " " + word)


def _words(tokenizer: Any, given: Sequence[str] | None, default: Sequence[str], what: str, least: int) -> list[str]:
    """The words that are one token after a space: a user's list must be all such, the default is filtered."""
    words = list(default if given is None else given)
    if given is not None and (isinstance(given, str) or not all(isinstance(w, str) and w.strip() for w in words)):
        raise InputError(f"{what} must be a list of non-empty strings, got {given!r}")
    kept = [w for w in dict.fromkeys(words) if single_token_id(tokenizer, w) is not None]
    if given is not None and len(kept) < len(dict.fromkeys(words)):
        bad = [w for w in dict.fromkeys(words) if w not in kept]
        raise InputError(
            f"{what} {', '.join(repr(w) for w in bad)} are not single tokens after a space in this tokenizer: "
            f"drop them or choose other {what}"
        )
    if len(kept) < least:
        raise InputError(
            f"only {len(kept)} {what} are single tokens after a space in this tokenizer; IOI prompts need "
            f"at least {least}: pass {what}= with more single-token words"
        )
    return kept


_FIELDS = ("A", "B", "C", "PLACE", "OBJECT")
"""The fields a template may hold: the two names, the repeated mention, the place and the object."""


def _check_templates(templates: Sequence[str]) -> list[str]:
    if isinstance(templates, str) or len(templates) == 0:
        raise InputError("templates must be a non-empty list of strings with {A}, {B} and {C} in them")
    for i, t in enumerate(templates):
        if not isinstance(t, str) or any(t.count("{" + key + "}") != 1 for key in ("A", "B", "C")):
            raise InputError(f"template {i} must name {{A}}, {{B}} and {{C}} once each, got {t!r}")
        try:  # str.format would fail on the first prompt with a KeyError / IndexError / ValueError traceback
            fields = [(name, spec, conv) for _, name, spec, conv in string.Formatter().parse(t) if name is not None]
        except ValueError:
            fields = [("", "", "unbalanced")]
        if any(name not in _FIELDS or spec or conv for name, spec, conv in fields):
            raise InputError(
                f"template {i} may hold only the fields {{A}}, {{B}}, {{C}}, {{PLACE}} and {{OBJECT}} (a literal "
                f"brace doubled, {{{{ or }}}}), got {t!r}"
            )
        if not t.index("{A}") < t.index("{B}") < t.index("{C}"):
            raise InputError(f"template {i} must name {{A}}, then {{B}}, then {{C}}, got {t!r}")
        if t.rstrip() != t:
            raise InputError(f"template {i} ends in whitespace; end it before the answer's space, got {t!r}")
    return list(templates)


def _fill(template: str, a: str, b: str, c: str, place: str, obj: str) -> str:
    return template.format(A=a, B=b, C=c, PLACE=place, OBJECT=obj)


def _locate(ids: list[int], first: int, second: int, mention: int) -> tuple[int, int, int] | None:
    """Positions of the first name, the second name and the repeated mention, or None if they are ambiguous."""
    at = {tok: [j for j, t in enumerate(ids) if t == tok] for tok in {first, second, mention}}
    if mention == first:  # the repeated name occurs twice, the other once
        if len(at[first]) != 2 or len(at[second]) != 1:
            return None
        return at[first][0], at[second][0], at[first][1]
    if mention == second:
        if len(at[second]) != 2 or len(at[first]) != 1:
            return None
        return at[first][0], at[second][0], at[second][1]
    if any(len(v) != 1 for v in at.values()):
        return None
    return at[first][0], at[second][0], at[mention][0]


def ioi_dataset(
    model_or_tokenizer: Any,
    n: int = 64,
    seed: int = 0,
    names: Sequence[str] | None = None,
    places: Sequence[str] | None = None,
    objects: Sequence[str] | None = None,
    templates: Sequence[str] = TEMPLATES,
    max_tries: int = 100,
) -> IOIDataset:
    """``n`` seeded IOI prompts with their ABC corruptions, every name, place and object a single token.

    Prompt ``i`` is ABBA when ``i`` is even and BABA when odd (the two orders are balanced); its template,
    names, place and object are drawn with ``mlsafety.core.generator(seed, "ioi")``. A draw whose clean and
    corrupted prompts differ in token length, or whose name tokens cannot be found once (twice for the
    subject) in the tokenised prompt (a tokenizer that merges a name with its neighbour), is drawn again.

    Args:
        model_or_tokenizer: a :class:`~mlsafety.core.LanguageModel` or a ``transformers`` tokenizer.
        n: number of prompts.
        seed: the same seed gives the same prompts.
        names: candidate names; None: :data:`NAMES` filtered to the single-token ones. Given names must all
            be single tokens after a space (at least five: IO, S and three ABC names).
        places: candidate places; None: :data:`PLACES` filtered. Given ones must all be single tokens.
        objects: candidate objects; None: :data:`OBJECTS` filtered. Given ones must all be single tokens.
        templates: strings with ``{A}``, ``{B}``, ``{C}`` (first name, second name, repeated mention) and
            optionally ``{PLACE}`` and ``{OBJECT}``, ending just before the answer.
        max_tries: draws per prompt before giving up.

    Returns:
        An :class:`IOIDataset`.

    Raises:
        InputError: a given name, place or object that is not one token (all offenders listed), too few
            usable words, a malformed template, or no valid draw in ``max_tries``.

    Example:
        >>> data = ioi_dataset(lm, n=64, seed=0)
        >>> data.prompts[0], data.io_ids[0], data.positions["END"][0]
    """
    if not isinstance(n, int) or n < 1:
        raise InputError(f"n must be a positive integer, got {n!r}")
    if not isinstance(max_tries, int) or max_tries < 1:
        raise InputError(f"max_tries must be a positive integer, got {max_tries!r}")
    tokenizer = _tokenizer_of(model_or_tokenizer)
    templates = _check_templates(templates)
    name_list = _words(tokenizer, names, NAMES, "names", 5)
    place_list = _words(tokenizer, places, PLACES, "places", 1)
    object_list = _words(tokenizer, objects, OBJECTS, "objects", 1)
    token = {w: single_token_id(tokenizer, w) for w in name_list}
    g = generator(seed, "ioi")

    def pick(k: int) -> int:
        return int(torch.randint(k, (1,), generator=g))

    prompts: list[str] = []
    corrupted: list[str] = []
    io_names: list[str] = []
    s_names: list[str] = []
    pos: dict[str, list[int]] = {key: [] for key in POSITIONS}
    lengths: list[int] = []
    chosen: list[int] = []
    orders: list[Order] = []
    for i in range(n):
        order: Order = "ABBA" if i % 2 == 0 else "BABA"
        for _ in range(max_tries):
            t = pick(len(templates))
            drawn = [name_list[int(j)] for j in torch.randperm(len(name_list), generator=g)[:5]]
            io, s, a, b, c = drawn
            place, obj = place_list[pick(len(place_list))], object_list[pick(len(object_list))]
            first, second = (io, s) if order == "ABBA" else (s, io)
            clean = _fill(templates[t], first, second, s, place, obj)
            abc = _fill(templates[t], a, b, c, place, obj)
            clean_ids = encode(tokenizer, [clean], max_length=None, padding_side="right").input_ids[0].tolist()
            abc_ids = encode(tokenizer, [abc], max_length=None, padding_side="right").input_ids[0].tolist()
            found = _locate(clean_ids, token[first], token[second], token[s])  # type: ignore[arg-type]
            found_abc = _locate(abc_ids, token[a], token[b], token[c])  # type: ignore[arg-type]
            if len(clean_ids) != len(abc_ids) or found is None or found != found_abc:
                continue
            io_at, s1_at = (found[0], found[1]) if order == "ABBA" else (found[1], found[0])
            break
        else:
            raise InputError(
                f"no IOI draw for prompt {i} in {max_tries} tries gave clean and ABC prompts of equal token "
                "length with findable name tokens: check the templates and word lists against the tokenizer"
            )
        prompts.append(clean)
        corrupted.append(abc)
        io_names.append(io)
        s_names.append(s)
        for key, value in zip(POSITIONS, (io_at, s1_at, found[2], len(clean_ids) - 1)):
            pos[key].append(value)
        lengths.append(len(clean_ids))
        chosen.append(t)
        orders.append(order)
    return IOIDataset(
        prompts=prompts,
        corrupted=corrupted,
        io_ids=torch.tensor([token[w] for w in io_names], dtype=torch.int64),
        s_ids=torch.tensor([token[w] for w in s_names], dtype=torch.int64),
        io_names=io_names,
        s_names=s_names,
        positions={key: torch.tensor(value, dtype=torch.int64) for key, value in pos.items()},
        lengths=torch.tensor(lengths, dtype=torch.int64),
        templates=chosen,
        orders=orders,
        template_texts=tuple(templates),
        vocabulary=(tuple(name_list), tuple(place_list), tuple(object_list)),
    )
