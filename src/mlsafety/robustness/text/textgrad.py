"""TextGrad (Hou et al., "TextGrad: Advancing Robustness Evaluation in NLP by Gradient-Driven Optimization", ICLR 2023).

The discrete attack problem (choose at most ``k`` words to change, and for each a substitute from its
candidate set) is relaxed to continuous variables and solved by projected gradient descent:

* site selection ``z in [0, 1]^S`` with the budget ``sum z <= k`` (S: the words the constraints let
  change that have candidates);
* substitution ``u_s`` on the probability simplex over site ``s``'s candidates;
* the relaxed input embedding of site ``s`` (each of its tokens ``t``) is
  ``e_s,t + z_s (sum_m u_s,m c_s,m,t - e_s,t)``, fed to the victim through
  :meth:`~mlsafety.core.Classifier.logits_from_embeddings`;
* the loss is the C&W margin ``max(f_y - max_{j != y} f_j, -kappa)`` (targeted: ``max_{j != t} f_j - f_t``),
  minimised with steps normalised by each variable's largest gradient entry, then projected
  (:func:`~._projection.project_capped_simplex`, :func:`~._projection.project_simplex`: bisection on the
  dual variable).

The relaxed solution is turned into texts by sampling: ``samples`` draws of ``z_s ~ Bernoulli(z_s)`` (the
``k`` largest ``z`` kept when more are drawn, the largest one when none is) and ``u_s ~ Categorical(u_s)``,
plus the mode (the ``round(sum z)`` largest sites, each with its most likely substitute). Every drawn text
must keep the attack's constraints (among them the fluency constraint: the embedded causal LM's
perplexity may rise at most ``max_perplexity_ratio`` times, :class:`~._fluency.Perplexity`); the rest are
scored by the victim in one padded batch and the successful one with the fewest changed words (then the
highest goal score) is returned.

Deviations from the paper: candidate sets come from the recipe's transformation (WordNet synonyms and
the victim's embedding neighbours, filtered by the constraints word by word) instead of a masked LM;
fluency is a constraint on the sampled texts instead of a perplexity term in the relaxed loss (the
causal LM's tokens are not the victim's, so its perplexity is not a function of the victim's relaxed
embeddings); the embedding neighbours put antonyms close (counter-fitting, Mrkšić et al. 2016, is what pushes
them apart in TextAttack's vectors), so no substitute may be a WordNet antonym of the word it replaces
(:class:`~.constraints.NoAntonym`; ``refuse_antonyms=False`` turns it off), which the masked-LM candidates of
the paper do not check either; a substitute must have as many tokens as the word it replaces; one round of sampling
after ``steps`` updates (no restarts); each gradient step counts as one query against the budget; the share
limit is rounded up, ``k = min(budget_words, ceil(max_share x words))`` (TextAttack's ``MaxWordsPerturbed``
rounding), where the authors' code takes ``int(0.25 x words)`` and leaves a text of fewer than 4 words
unattacked (the paper states the 25% share, not its rounding).
:class:`RandomSubstitutionSearch` is the same sampling from the uninformed starting point (``z = k / S``,
uniform ``u``), the baseline TextGrad must beat at equal budget.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from mlsafety.core import Classifier, LanguageModel, ModelLike, Param, as_classifier, frozen
from mlsafety.robustness.text import _resources
from mlsafety.robustness.text._base import (
    Attack,
    AttackedText,
    Constraint,
    Problem,
    QueryResult,
    SearchMethod,
    Transformation,
    check_text_classifier,
)
from mlsafety.robustness.text._fluency import Perplexity
from mlsafety.robustness.text._gradients import token_spans, word_token_ids
from mlsafety.robustness.text._projection import project_capped_simplex, project_simplex
from mlsafety.robustness.text._recipe import Recipe, register_text_attack
from mlsafety.robustness.text.constraints import max_words_for_share
from mlsafety.robustness.text.goals import Untargeted
from mlsafety.robustness.text.hotflip import word_char_spans


@dataclass
class Relaxation:
    """One example's relaxed problem: sites, their candidates and the tensors the relaxation needs.

    Attributes:
        sites: word index of each site (S).
        words: candidate words of each site.
        positions: ``(S, T)`` token positions of each site's word; ``tmask`` ``(S, T)`` marks real slots.
        cand_ids: ``(S, M, T)`` token ids of each candidate; ``cmask`` ``(S, M)`` marks real candidates.
    """

    sites: list[int]
    words: list[list[str]]
    positions: torch.Tensor
    tmask: torch.Tensor
    cand_ids: torch.Tensor
    cmask: torch.Tensor


def first_allowed(
    problem: Problem, cands: list[AttackedText], max_candidates: int, skip: tuple[type, ...] = ()
) -> dict[int, list[str]]:
    """The first ``max_candidates`` substitutes of each site (in the transformation's order) that every
    constraint not of a type in ``skip`` allows.

    Candidates are judged in rounds, each taking at most the number still missing at every site, so the
    constraints (the sentence encoder above all) never judge a candidate that could not be kept; every
    constraint judges each candidate on its own, so the result is that of judging them all at once.
    """
    pools: dict[int, list[AttackedText]] = {}
    for c in cands:
        assert c.last is not None
        pools.setdefault(c.last, []).append(c)
    kept: dict[int, list[str]] = {i: [] for i in pools}
    taken = dict.fromkeys(pools, 0)
    while True:
        batch: list[AttackedText] = []
        for i, pool in pools.items():
            need = max_candidates - len(kept[i])
            if need > 0 and taken[i] < len(pool):
                batch += pool[taken[i] : taken[i] + need]
                taken[i] += need
        if not batch:
            break
        for con in problem.attack.constraints:
            if not batch:
                break
            if not isinstance(con, skip):
                batch = [c for c, ok in zip(batch, con.allows(problem.original, batch)) if ok]
        for c in batch:
            assert c.last is not None
            kept[c.last].append(c.words[c.last])
    return {i: words for i, words in kept.items() if words}


def build_relaxation(
    clf: Classifier, problem: Problem, max_candidates: int, skip: tuple[type, ...] = (Perplexity,)
) -> Relaxation | None:
    """Candidate sets of the words the constraints let change (each single swap checked by every
    constraint except those of the types in ``skip``), kept where they tokenise like the word; None when
    no site is left."""
    orig = problem.original
    indices = problem.modifiable(orig)
    by_site = first_allowed(problem, problem.attack.transformation.transform(orig, indices, problem.g),
                            max_candidates, skip)  # fmt: skip
    if not by_site:
        return None
    n_tokens = int(clf.encode([orig.text]).lengths[0])
    spans = token_spans(clf.tokenizer, orig.text, word_char_spans(orig), n_tokens)
    batch_ids = clf.encode([orig.text]).input_ids[0]
    sites: list[int] = []
    words: list[list[str]] = []
    ids: list[list[list[int]]] = []
    for i in sorted(by_site):
        span = spans[i]
        if not span:
            continue
        space = orig.pieces[2 * i][-1:].isspace()
        toks = word_token_ids(clf.tokenizer, by_site[i], leading_space=space)
        if [int(batch_ids[p]) for p in span] != word_token_ids(clf.tokenizer, [orig.words[i]], space)[0]:
            continue  # the word does not tokenise alone as it does in the text: no clean substitution
        ok = [(w, t) for w, t in zip(by_site[i], toks) if len(t) == len(span)]
        if ok:
            sites.append(i)
            words.append([w for w, _ in ok])
            ids.append([t for _, t in ok])
    if not sites:
        return None
    s, m = len(sites), max(len(w) for w in words)
    t = max(len(spans[i]) for i in sites)
    positions = torch.zeros((s, t), dtype=torch.long)
    tmask = torch.zeros((s, t), dtype=torch.bool)
    cand_ids = torch.zeros((s, m, t), dtype=torch.long)
    cmask = torch.zeros((s, m), dtype=torch.bool)
    for a, i in enumerate(sites):
        span = spans[i]
        positions[a, : len(span)] = torch.tensor(span)
        tmask[a, : len(span)] = True
        for b, tok in enumerate(ids[a]):
            cand_ids[a, b, : len(tok)] = torch.tensor(tok)
            cmask[a, b] = True
    return Relaxation(sites, words, positions, tmask, cand_ids, cmask)


def margin_loss(logits: torch.Tensor, label: int, target: int | None, kappa: float) -> torch.Tensor:
    """C&W margin to minimise, ``(N,)``: the true class's lead (targeted: the target's deficit), at least ``-kappa``."""
    cls = label if target is None else target
    own = logits[:, cls]
    other = logits.clone()
    other[:, cls] = float("-inf")
    f = own - other.amax(dim=1)
    return (f if target is None else -f).clamp_min(-kappa)


class TextGradSearch(SearchMethod):
    """TextGrad's relaxed optimisation and sampling (see the module docs).

    Args:
        clf: the white-box victim.
        budget_words: ``k``, words changed at most.
        steps: projected gradient steps (0: sample from the starting point, the random baseline).
        samples: texts drawn from the relaxed solution.
        lr_z, lr_u: step sizes of site selection and substitution (relative to each one's largest
            gradient entry).
        max_candidates: candidates per site at most.
        kappa: margin at which the loss saturates.
        max_share: share of a text's words changed at most (None: no share limit); with it ``k`` is at most
            ``ceil(max_share x words)`` (:func:`~.constraints.max_words_for_share`, the recipe's
            :class:`~.constraints.MaxWordsPerturbed` rounding), so the relaxation and the samples keep the limit.
    """

    name: ClassVar[str] = "textgrad"

    def __init__(
        self,
        clf: Classifier,
        budget_words: int = 3,
        steps: int = 20,
        samples: int = 20,
        lr_z: float = 0.5,
        lr_u: float = 0.5,
        max_candidates: int = 20,
        kappa: float = 5.0,
        max_share: float | None = None,
    ) -> None:
        self.clf = clf
        self.k = int(budget_words)
        self.max_share = max_share
        self.steps = int(steps)
        self.samples = int(samples)
        self.lr_z = float(lr_z)
        self.lr_u = float(lr_u)
        self.max_candidates = int(max_candidates)
        self.kappa = float(kappa)

    def budget(self, text: AttackedText) -> int:
        """``k`` for ``text``: :attr:`k`, at most ``ceil(max_share x words)`` when a share limit is set."""
        if self.max_share is None:
            return self.k
        return min(self.k, max_words_for_share(self.max_share, text.num_words))

    def optimise(self, problem: Problem, rel: Relaxation) -> tuple[torch.Tensor, torch.Tensor]:
        """The relaxed solution ``(z (S,), u (S, M))`` after :attr:`steps` projected gradient steps."""
        clf = self.clf
        dev = clf.device
        s = len(rel.sites)
        k = float(min(self.budget(problem.original), s))
        z = torch.full((1, s), k / s, device=dev)
        cm = rel.cmask.to(dev)
        u = cm.float() / cm.float().sum(dim=1, keepdim=True)
        if self.steps == 0:
            return z[0], u
        batch = clf.encode([problem.original.text]).to(dev)
        pos, tm = rel.positions.to(dev), rel.tmask.to(dev)
        with frozen(clf.module):
            with torch.no_grad():
                base = clf.embeddings(batch)[0]  # (L, D)
                cand = clf.embedding_layer(rel.cand_ids.to(dev))  # (S, M, T, D)
                old = base[pos]  # (S, T, D)
            flat = pos[tm]
            for _ in range(self.steps):
                if problem.remaining is not None and problem.remaining <= self.samples + 1:
                    break  # keep the rest of the budget for the sampled texts: the mode and the samples draws
                problem.queries += 1
                zv = z.clone().requires_grad_(True)
                uv = u.clone().requires_grad_(True)
                with torch.enable_grad():
                    mix = (uv[..., None, None] * cand).sum(dim=1)  # (S, T, D)
                    delta = zv[0][:, None, None] * (mix - old)
                    emb = base.index_add(0, flat, delta[tm])
                    logits = clf.logits_from_embeddings(emb[None], batch.attention_mask)
                    loss = margin_loss(logits, problem.label, problem.target, self.kappa).sum()
                    gz, gu = torch.autograd.grad(loss, (zv, uv))
                gz = gz / gz.abs().amax().clamp_min(1e-12)
                gu = gu * cm
                gu = gu / gu.abs().amax(dim=1, keepdim=True).clamp_min(1e-12)
                z = project_capped_simplex(z - self.lr_z * gz, k, torch.ones_like(z, dtype=torch.bool))
                u = project_simplex(u - self.lr_u * gu, cm)
        return z[0].detach(), u.detach()

    def sample(
        self, rel: Relaxation, z: torch.Tensor, u: torch.Tensor, g: torch.Generator, budget: int | None = None
    ) -> list[dict[int, str]]:
        """Substitutions drawn from the relaxed solution: the mode first, then :attr:`samples` draws, each of at
        most ``budget`` words (None: :attr:`k`)."""
        z, u = z.cpu().float(), u.cpu().float()
        s = z.shape[0]
        k = min(self.k if budget is None else budget, s)
        out: list[dict[int, str]] = []
        n_mode = max(1, min(k, round(float(z.sum()))))
        mode_sites = z.topk(n_mode).indices.tolist()
        mode_u = u.argmax(dim=1)
        out.append({rel.sites[a]: rel.words[a][int(mode_u[a])] for a in mode_sites})
        picks = torch.bernoulli(z.clamp(0, 1).expand(self.samples, s), generator=g).bool()
        choice = torch.multinomial(
            u.clamp_min(0) + 1e-12 * rel.cmask.float(), self.samples, replacement=True, generator=g
        )
        tiebreak = torch.rand((self.samples, s), generator=g) * 1e-6
        for r in range(self.samples):
            chosen = picks[r].nonzero()[:, 0]
            if chosen.numel() == 0:
                chosen = (z + tiebreak[r]).argmax()[None]
            elif chosen.numel() > k:
                chosen = chosen[(z[chosen] + tiebreak[r, chosen]).topk(k).indices]
            out.append({rel.sites[a]: rel.words[a][int(choice[a, r])] for a in chosen.tolist()})
        return out

    def search(self, problem: Problem, start: QueryResult) -> AttackedText:
        rel = build_relaxation(self.clf, problem, self.max_candidates)
        if rel is None:
            return problem.original
        z, u = self.optimise(problem, rel)
        texts: list[AttackedText] = []
        seen: set[str] = set()
        for subs in self.sample(rel, z, u, problem.g, self.budget(problem.original)):
            t = problem.original.replace_words(subs)
            if t.text not in seen and t.changed:
                seen.add(t.text)
                texts.append(t)
        texts = problem.allowed(texts, [problem.original] * len(texts))  # every sample is made from the original
        if not texts:
            return problem.original
        result = problem.query(texts)
        if len(result) == 0:
            return problem.original
        if bool(result.reached.any()):
            fewest = min(len(t.changed) for t, r in zip(result.texts, result.reached.tolist()) if r)
            ok = torch.tensor([r and len(t.changed) == fewest for t, r in zip(result.texts, result.reached.tolist())])
            return result.texts[int(result.scores.masked_fill(~ok, float("-inf")).argmax())]
        return result.texts[int(result.scores.argmax())]


class RandomSubstitutionSearch(TextGradSearch):
    """The baseline: TextGrad's sampling from its uninformed start (``z = k / S``, uniform ``u``), no steps."""

    name: ClassVar[str] = "random-substitution"

    def __init__(
        self,
        clf: Classifier,
        budget_words: int = 3,
        samples: int = 20,
        max_candidates: int = 20,
        max_share: float | None = None,
    ) -> None:
        super().__init__(clf, budget_words, steps=0, samples=samples, max_candidates=max_candidates,
                         max_share=max_share)  # fmt: skip


def textgrad_parts(clf: Classifier, recipe: TextGrad, lm: Any) -> tuple[Transformation, list[Constraint], Any]:
    """The recipe's transformation, constraints and sentence encoder.

    Candidates: WordNet synonyms and the victim's ``max_candidates`` embedding neighbours. Constraints:
    stop words and repeated modification kept, at most ``budget_words`` words and ``max_share`` of them
    changed, a shared WordNet part of speech, no WordNet antonym (when ``recipe.refuse_antonyms``), windowed
    sentence similarity (MiniLM cosine) at least
    ``min_similarity`` in every changed word's window, and the language model's perplexity ratio (when ``lm``
    is given)."""
    from mlsafety.robustness.text._resources import minilm_encoder
    from mlsafety.robustness.text.constraints import (
        MaxWordsPerturbed,
        NoAntonym,
        PartOfSpeech,
        RepeatModification,
        SentenceSimilarity,
        StopWords,
    )
    from mlsafety.robustness.text.transformations import Composite, EmbeddingSwap, WordNetSwap, word_vectors

    encoder = minilm_encoder()
    transformation = Composite(
        [WordNetSwap(recipe.max_candidates), EmbeddingSwap(word_vectors("victim", clf), recipe.max_candidates)]
    )
    constraints: list[Constraint] = [
        RepeatModification(),
        StopWords(),
        MaxWordsPerturbed(max_share=recipe.max_share, max_words=recipe.budget_words),
        PartOfSpeech(),
        *([NoAntonym()] if recipe.refuse_antonyms else []),
        # a sampled text changes several words at once: every changed word's window is compared ("last" would
        # look only at the highest index's)
        SentenceSimilarity(encoder, recipe.min_similarity, "cosine", windows="all"),
    ]
    if lm is not None:
        constraints.append(Perplexity(lm, recipe.max_perplexity_ratio))
    return transformation, constraints, encoder


@register_text_attack("textgrad", tags=("white-box", "word-level"))
class TextGrad(Recipe):
    """TextGrad (Hou et al. 2022/ICLR 2023): relaxed site selection and substitution by projected gradient,
    then sampling; see the module docs."""

    budget_words = Param(3, int, low=1, doc="k: words changed at most (the relaxation's budget)")
    max_share = Param(0.25, float, low=0.01, high=1, doc="share of a text's words changed at most (rounded up)")
    steps = Param(20, int, low=0, doc="projected gradient steps (each counts as one query)")
    samples = Param(20, int, low=1, doc="texts drawn from the relaxed solution")
    lr = Param(0.5, float, low=0, doc="step size of z and u, relative to each one's largest gradient entry")
    max_candidates = Param(20, int, low=1, doc="candidate substitutes per word at most")
    kappa = Param(5.0, float, low=0, doc="margin at which the C&W loss saturates")
    min_similarity = Param(0.8, float, low=-1, high=1, doc="sentence similarity (MiniLM cosine, windowed) at least")
    fluency = Param("smollm2-135m", str, doc="zoo causal LM whose perplexity bounds fluency, or 'none'")
    max_perplexity_ratio = Param(2.0, float, low=1, doc="candidate perplexity at most this times the original's")
    refuse_antonyms = Param(True, bool, doc="refuse a swap for a WordNet antonym (NoAntonym; False: the old recipe)")

    name: ClassVar[str] = "textgrad"

    def build(self, model: ModelLike, **parts: Any) -> Attack:
        """The attack on ``model``; ``lm=`` (a causal LM for fluency), ``transformation=``, ``constraints=``
        and ``goal=`` replace the recipe's own."""
        clf = as_classifier(model)
        check_text_classifier(clf, "textgrad")
        if parts.get("constraints") is None or parts.get("transformation") is None:
            _resources.wordnet()  # a missing WordNet is named before any work
        lm = parts.get("lm")
        if lm is None and self.fluency != "none" and parts.get("constraints") is None:
            from mlsafety.zoo import load_model

            lm = LanguageModel(load_model(self.fluency))
        similarity = None
        if parts.get("constraints") is None or parts.get("transformation") is None:
            transformation, constraints, encoder = textgrad_parts(clf, self, lm)
            similarity = encoder.cosine
        transformation = parts.get("transformation") or transformation
        constraints = parts.get("constraints") or constraints
        search = TextGradSearch(
            clf, self.budget_words, self.steps, self.samples, self.lr, self.lr, self.max_candidates, self.kappa,
            max_share=self.max_share,
        )  # fmt: skip
        return Attack(
            clf,
            parts.get("goal") or Untargeted(),
            transformation,
            constraints,
            search,
            query_budget=self.query_budget,
            batch_size=self.batch_size,
            similarity=similarity,
            seed=self.seed,
            name=self.name,
        )
