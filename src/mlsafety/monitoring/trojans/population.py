"""A reproducible population of clean and trojaned models, and scanners scored on it.

A scanner's verdict on one model says little; its detection AUROC over many models, some clean
and some trojaned, says how far it can be trusted. :func:`make_population` trains such a
population on the embedded digits data (half clean, half trojaned across the attack types, with
different seeds, targets and trigger parameters) and writes the weights and a ``manifest.json``;
:func:`score_scanner` runs one scanner over a population and reports detection AUROC on the
continuous scores (with a bootstrap interval), target-class accuracy (with an exact interval) and
time per model.

Also home of :func:`train_digits_cnn_badnets`, the recipe of the zoo's ``digits-cnn-badnets``
(registered under that name with :func:`mlsafety.core.register_recipe`).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mlsafety.core import (
    ArrayDataset,
    DataLike,
    InputError,
    Progress,
    as_array_dataset,
    generator,
    load_weights,
    random_shift,
    register_recipe,
    seeded_init,
    track,
)
from mlsafety.core import train as core_train  # `train` is a parameter name here (the training data)
from mlsafety.metrics import Estimate, auroc, bootstrap_two_sample, proportion
from mlsafety.monitoring.trojans.attacks import (
    TROJAN_ATTACKS,
    TriggerAttack,
    train_trojaned,
    triggered_inputs,
    trojan_metrics,
)
from mlsafety.monitoring.trojans.scanners import Scanner, ScanResult
from mlsafety.zoo import DigitsCNN, load_dataset, save_weights

BADNETS_DEMO: dict[str, Any] = {
    "attack": "badnets",
    "params": {"size": 3, "corner": "bottom-right"},
    "rate": 0.1,
    "target": 7,
}
"""How the zoo's ``digits-cnn-badnets`` was poisoned: a 3x3 checkerboard in the bottom-right corner, 10% of
the training set relabelled to class 7."""

ATTACK_SETTINGS: dict[str, dict[str, Any]] = {
    "badnets": {
        "rate": 0.05,
        "params": lambda g: {
            "size": int(torch.randint(2, 4, (1,), generator=g)),
            "corner": ["bottom-right", "bottom-left", "top-right", "top-left"][
                int(torch.randint(0, 4, (1,), generator=g))
            ],
        },
    },
    "blended": {"rate": 0.15, "params": lambda g: {"pattern_seed": int(torch.randint(0, 1000, (1,), generator=g))}},
    "wanet": {"rate": 0.1, "params": lambda g: {"field_seed": int(torch.randint(0, 1000, (1,), generator=g))}},
    "label-consistent": {
        "rate": 0.05,
        "params": lambda g: {"corner": ["bottom-right", "top-left"][int(torch.randint(0, 2, (1,), generator=g))]},
    },
}
"""Per attack: the poison rate and how trigger parameters are drawn for population members (rates
chosen so each attack reaches a high success rate on the digits data)."""


def train_digits_cnn_badnets(seed: int = 0, progress: Progress | None = None) -> nn.Module:
    """The recipe of the zoo's ``digits-cnn-badnets``: :data:`BADNETS_DEMO` on the digits train split,
    the ``digits-cnn`` architecture and training schedule (40 epochs)."""
    attack = TROJAN_ATTACKS.create(BADNETS_DEMO["attack"], **BADNETS_DEMO["params"])
    model, _ = train_trojaned(
        DigitsCNN,
        load_dataset("digits", "train"),
        attack,
        rate=BADNETS_DEMO["rate"],
        target=BADNETS_DEMO["target"],
        seed=seed,
        epochs=40,
        progress=progress,
    )
    return model


register_recipe("digits-cnn-badnets", train_digits_cnn_badnets)


def demo_attack() -> TriggerAttack:
    """The attack planted in ``digits-cnn-badnets`` (its target is ``BADNETS_DEMO["target"]``)."""
    return TROJAN_ATTACKS.create(BADNETS_DEMO["attack"], **BADNETS_DEMO["params"])


@dataclass
class Member:
    """One model of a population.

    Attributes:
        name: file stem of its weights.
        trojaned: whether its training set was poisoned.
        attack: the attack's registry name; for a clean model, the attack whose trigger its probe
            traffic carries (so input-level scanners see the same kind of traffic on every model).
        params: the attack's parameters.
        rate: poison rate (0 for clean models).
        target: the attack's target class (for clean models, the probe trigger's nominal target).
        seed: training seed.
        clean_accuracy: test accuracy.
        attack_success_rate: the trigger's success rate on the test set.
    """

    name: str
    trojaned: bool
    attack: str
    params: dict[str, Any]
    rate: float
    target: int
    seed: int
    clean_accuracy: float = float("nan")
    attack_success_rate: float = float("nan")
    extra: dict[str, Any] = field(default_factory=dict)

    def make_attack(self) -> TriggerAttack:
        return TROJAN_ATTACKS.create(self.attack, **self.params)

    def training_set(self, train: ArrayDataset) -> tuple[ArrayDataset, torch.Tensor]:
        """The training set this member saw and its poisoned-sample mask (all False for clean models)."""
        if not self.trojaned:
            return train, torch.zeros(len(train), dtype=torch.bool)
        attack = self.make_attack()
        g = attack.default_generator(self.seed, self.target, self.rate)
        p = attack.poison(train, self.rate, self.target, generator=g)
        return p.data, p.poisoned


def plan_population(n: int = 20, seed: int = 0) -> list[Member]:
    """The members of a population of ``n`` models (half clean), deterministic in ``seed``."""
    if n < 2:
        raise InputError("a population needs at least 2 models (one clean, one trojaned)")
    g = generator(seed, "trojan-population")
    names = TROJAN_ATTACKS.available()
    members = []
    for i in range(n):
        trojaned = i % 2 == 1
        attack = names[(i // 2) % len(names)]
        setting = ATTACK_SETTINGS.get(attack, {"rate": 0.1, "params": lambda g: {}})
        params = setting["params"](g)
        target = int(torch.randint(0, 10, (1,), generator=g))
        kind = "trojan" if trojaned else "clean"
        members.append(
            Member(
                f"{i:03d}-{kind}-{attack}",
                trojaned,
                attack,
                params,
                setting["rate"] if trojaned else 0.0,
                target,
                seed * 1000 + i,
            )
        )
    return members


def make_population(
    out: str | Path,
    n: int = 20,
    seed: int = 0,
    epochs: int = 20,
    factory: Callable[[], nn.Module] | None = None,
    train: ArrayDataset | None = None,
    test: ArrayDataset | None = None,
    progress: Progress | None = None,
) -> list[Member]:
    """Train a population of ``n`` models (half clean, half trojaned) and write it to ``out``.

    Writes ``<out>/<name>.safetensors`` per model and ``<out>/manifest.json``. Deterministic on
    the CPU given ``seed``.

    Args:
        out: output folder (created).
        n: number of models.
        seed: population seed (attacks, targets, trigger parameters and training seeds).
        epochs: training epochs per model.
        factory: model constructor (default: the zoo's ``DigitsCNN``).
        train: training data (default: the digits train split).
        test: data for the accuracy and success-rate figures (default: the digits test split).
        progress: progress display.
    """
    factory = factory or DigitsCNN
    train = train if train is not None else load_dataset("digits", "train")
    test = test if test is not None else load_dataset("digits", "test")
    out = Path(out)
    members = plan_population(n, seed)  # refuses a bad n before the folder is made
    out.mkdir(parents=True, exist_ok=True)
    for m in track(members, progress, "training population", total=len(members)):
        attack = m.make_attack()
        if m.trojaned:
            model, _ = train_trojaned(factory, train, attack, m.rate, m.target, seed=m.seed, epochs=epochs)
        else:
            model = seeded_init(factory(), m.seed, "clean")
            core_train(model, train, epochs=epochs, seed=m.seed, augment=random_shift)
        figures = trojan_metrics(model, attack, test, m.target)
        m.clean_accuracy = figures["clean_accuracy"].value
        m.attack_success_rate = figures["attack_success_rate"].value
        save_weights(model, out / f"{m.name}.safetensors")
    manifest = {"seed": seed, "epochs": epochs, "members": [asdict(m) for m in members]}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True))
    return members


def load_population(path: str | Path, factory: Callable[[], nn.Module] | None = None) -> list[tuple[Member, nn.Module]]:
    """The members and models of a population written by :func:`make_population`."""
    path = Path(path)
    manifest_path = path / "manifest.json"
    if not manifest_path.is_file():
        raise InputError(f"no population at {path}: manifest.json is missing; run `mlsafety trojans population`")
    manifest = json.loads(manifest_path.read_text())
    factory = factory or DigitsCNN
    return [
        (member, load_weights(factory(), path / f"{member.name}.safetensors"))
        for member in (Member(**entry) for entry in manifest["members"])
    ]


@dataclass
class PopulationScore:
    """A scanner scored on a population.

    Attributes:
        scanner: registry name.
        auroc: detection AUROC of the continuous model-level scores (trojaned = positive), with a
            seeded bootstrap 95% interval.
        target_accuracy: share of trojaned models whose top suspected target is the true one
            (exact 95% interval); None when the scanner names no target for any model.
        verdict_accuracy: share of models the thresholded verdict gets right (exact interval).
        seconds_per_model: mean wall-clock time of one scan.
        cpu_seconds_per_model: mean CPU time of one scan (this process; steadier than wall-clock
            time on a shared machine).
        input_auroc: for input-level scanners, the mean over trojaned models of the AUROC telling
            triggered from clean probe inputs (None otherwise).
        sample_auroc: for data-level scanners, the mean over trojaned models of the AUROC telling
            poisoned from clean training samples of the target class, where these scanners look
            for them (None otherwise).
        results: every model's scan result, in population order.
    """

    scanner: str
    auroc: Estimate
    target_accuracy: Estimate | None
    verdict_accuracy: Estimate
    seconds_per_model: float
    cpu_seconds_per_model: float
    input_auroc: float | None = None
    sample_auroc: float | None = None
    results: list[ScanResult] = field(default_factory=list)


def probe_inputs(member: Member, test: ArrayDataset, n: int = 100) -> tuple[torch.Tensor, torch.Tensor]:
    """Run-time traffic for input-level scanners: ``n`` clean test inputs then ``n`` triggered ones.

    Returns the inputs and a boolean mask of the triggered ones.
    """
    trig = triggered_inputs(member.make_attack().apply_trigger, test, member.target)
    x = torch.cat([test.x[:n], trig.x[:n]])
    is_trig = torch.zeros(x.shape[0], dtype=torch.bool)
    is_trig[min(n, len(test)) :] = True
    return x, is_trig


def score_scanner(
    scanner: Scanner,
    population: Sequence[tuple[Member, nn.Module]],
    clean: DataLike,
    test: DataLike,
    train: DataLike,
    n_boot: int = 1000,
    progress: Progress | None = None,
) -> PopulationScore:
    """Run ``scanner`` on every model of ``population`` and score it.

    Args:
        scanner: the scanner.
        population: members and their models (at least one clean and one trojaned).
        clean: the defender's clean held-out data given to every scan.
        test: data the probe traffic of input-level scanners is made from.
        train: the clean training set; each member's own (poisoned) version is rebuilt from it.
        n_boot: bootstrap resamples of the AUROC interval.
        progress: progress display.
    """
    clean = as_array_dataset(clean, "clean")
    test, train = as_array_dataset(test, "test"), as_array_dataset(train, "train")
    if len({m.trojaned for m, _ in population}) < 2:
        raise InputError("scoring needs both clean and trojaned models in the population")
    results, seconds, cpu, input_aurocs, sample_aurocs = [], [], [], [], []
    for member, model in track(population, progress, f"scanning with {scanner.name}", total=len(population)):
        train_m, poisoned = member.training_set(train)
        probe, is_trig = probe_inputs(member, test)
        start, start_cpu = time.perf_counter(), time.process_time()
        res = scanner.scan(model, clean, train=train_m, probe=probe)
        seconds.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
        results.append(res)
        if member.trojaned and res.sample_scores is not None:
            if "probe" in scanner.needs:
                input_aurocs.append(float(auroc(res.sample_scores[~is_trig], res.sample_scores[is_trig])))
            else:
                in_class = train_m.y == member.target
                bad, good = poisoned & in_class, ~poisoned & in_class
                if bool(bad.any()) and bool(good.any()):
                    sample_aurocs.append(float(auroc(res.sample_scores[good], res.sample_scores[bad])))
    labels = torch.tensor([m.trojaned for m, _ in population])
    scores = torch.tensor([r.score for r in results], dtype=torch.float64)
    det = bootstrap_two_sample(auroc, scores[~labels], scores[labels], n_boot=n_boot, seed=0)
    hits = [r.target == m.target for (m, _), r in zip(population, results) if m.trojaned]
    named = any(r.target is not None for r in results)
    verdicts = torch.tensor([r.flagged for r in results]) == labels
    return PopulationScore(
        scanner=scanner.name,
        auroc=det,
        target_accuracy=proportion(torch.tensor(hits)) if named else None,
        verdict_accuracy=proportion(verdicts),
        seconds_per_model=sum(seconds) / len(seconds),
        cpu_seconds_per_model=sum(cpu) / len(cpu),
        input_auroc=sum(input_aurocs) / len(input_aurocs) if input_aurocs else None,
        sample_auroc=sum(sample_aurocs) / len(sample_aurocs) if sample_aurocs else None,
        results=results,
    )
