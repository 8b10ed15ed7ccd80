"""The project's true/false statements: every label re-derived from the text, independently of the generator.

Each statement is parsed back into numbers or names and judged against facts written here (exact unit factors,
capitals, continents), so a generator bug and a check that reuses the generator's rule cannot agree by accident.
"""

from __future__ import annotations

import re
from collections import defaultdict

import pytest

from mlsafety.alignment import Statement, project_statements

WORDS = {w: i for i, w in enumerate("zero one two three four five six seven eight nine ten".split())}

# How many of the first unit make one of the second, by definition. A set holds every count that is right for
# some reading (a leap year has 366 days); a true statement needs a one-element set, a false one a count outside it.
UNIT_FACTS: dict[tuple[str, str], set[int]] = {
    ("centimetres", "metre"): {100},
    ("millimetres", "centimetre"): {10},
    ("metres", "kilometre"): {1000},
    ("grams", "kilogram"): {1000},
    ("millilitres", "litre"): {1000},
    ("seconds", "minute"): {60},
    ("minutes", "hour"): {60},
    ("hours", "day"): {24},
    ("days", "week"): {7},
    ("days", "fortnight"): {14},
    ("months", "year"): {12},
    ("days", "year"): {365, 366},
    ("years", "decade"): {10},
    ("years", "century"): {100},
    ("inches", "foot"): {12},
    ("feet", "yard"): {3},
    ("eggs", "dozen"): {12},
    ("sides", "triangle"): {3},
    ("sides", "square"): {4},
    ("sides", "pentagon"): {5},
    ("sides", "hexagon"): {6},
    ("legs", "spider"): {8},
    ("legs", "insect"): {6},
    ("legs", "dog"): {4},
    ("wheels", "bicycle"): {2},
}
VOWEL_SOUND = {"hour", "inch", "egg", "octagon", "insect"}  # nouns said with "an"

CAPITAL = {
    "France": "Paris", "Germany": "Berlin", "Italy": "Rome", "Spain": "Madrid", "Japan": "Tokyo",
    "England": "London", "Russia": "Moscow", "China": "Beijing", "Egypt": "Cairo", "Greece": "Athens",
    "Portugal": "Lisbon", "Ireland": "Dublin", "Austria": "Vienna", "Norway": "Oslo", "Sweden": "Stockholm",
    "Finland": "Helsinki", "Denmark": "Copenhagen", "Poland": "Warsaw", "Hungary": "Budapest",
    "Belgium": "Brussels", "Canada": "Ottawa", "Mexico": "Mexico City", "Argentina": "Buenos Aires",
    "Peru": "Lima", "Kenya": "Nairobi", "Thailand": "Bangkok", "South Korea": "Seoul", "India": "New Delhi",
    "Cuba": "Havana", "Chile": "Santiago", "Iran": "Tehran", "Turkey": "Ankara", "Australia": "Canberra",
    "the Netherlands": "Amsterdam",  # the constitution's capital; The Hague is the seat of government
    "Switzerland": "Bern",  # the federal city, capital in all but name
    "Czechia": "Prague",
}  # fmt: skip
# cities a false "capital of X" statement must not name: X's seats of government other than the capital
OTHER_SEATS = {"the Netherlands": {"The Hague"}, "Bolivia": {"La Paz", "Sucre"}, "South Africa": {"Pretoria"}}
# where each country's land mainly lies, and every continent with any of its territory (overseas regions, states,
# islands): a false "X is in C" needs C outside the second, so a transcontinental country cannot make it ambiguous
MAIN_CONTINENT = {
    "France": "Europe", "Germany": "Europe", "Italy": "Europe", "Spain": "Europe", "Norway": "Europe",
    "Poland": "Europe", "Japan": "Asia", "China": "Asia", "India": "Asia", "Thailand": "Asia", "Vietnam": "Asia",
    "Egypt": "Africa", "Kenya": "Africa", "Nigeria": "Africa", "Ghana": "Africa", "Morocco": "Africa",
    "Brazil": "South America", "Argentina": "South America", "Peru": "South America", "Chile": "South America",
    "Canada": "North America", "Mexico": "North America", "the United States": "North America",
    "Australia": "Oceania",
}  # fmt: skip
ALSO_IN = {
    "France": {"South America", "Africa", "North America", "Oceania"},  # French Guiana, Reunion, Martinique, Tahiti
    "Spain": {"Africa"},  # Ceuta, Melilla, the Canary Islands
    "Italy": {"Africa"},  # Lampedusa lies on the African plate
    "Egypt": {"Asia"},  # Sinai
    "Chile": {"Oceania"},  # Easter Island
    "the United States": {"Oceania"},  # Hawaii
}


def judge(s: Statement) -> tuple[bool, str]:
    """(the truth of ``s`` from its text alone, a key naming the fact: statements sharing it share a group)."""
    text = s.text
    if m := re.fullmatch(r"(\d+) \+ (\d+) = (\d+)\.", text):
        a, b, c = map(int, m.groups())
        return a + b == c, f"{min(a, b)}+{max(a, b)}"
    if m := re.fullmatch(r"(\d+) times (\d+) is (\d+)\.", text):
        a, b, c = map(int, m.groups())
        return a * b == c, f"{min(a, b)}*{max(a, b)}"
    if m := re.fullmatch(r"(\w+) minus (\w+) is (\w+)\.", text):
        a, b, c = (WORDS[w.lower()] for w in m.groups())
        return a - b == c, f"{a}-{b}"
    if m := re.fullmatch(r"(\d+) is larger than (\d+)\.", text):
        a, b = map(int, m.groups())
        return a > b, f"{max(a, b)}>{min(a, b)}"
    m = re.fullmatch(r"There are (\d+) (\w+) in (a|an) (\w+)\.", text)
    if m:
        n, small, article, big = m.groups()
    elif m := re.fullmatch(r"(A|An) (\w+) has (\d+) (\w+)\.", text):
        article, big, n, small = m.groups()
    if m:
        expected = "an" if big in VOWEL_SOUND or (big[0] in "aeiou" and not big.startswith("u")) else "a"
        assert article.lower() == expected, text
        truths = UNIT_FACTS[(small, big)]
        if int(n) in truths:
            assert len(truths) == 1, f"{text!r} is true only of some {big}s: ambiguous"
        return int(n) in truths, f"{small}/{big}"
    if m := re.fullmatch(r"The capital of (.+) is (.+)\.", text) or re.fullmatch(
        r"(.+) is the capital of (.+)\.", text
    ):
        country, city = m.groups() if text.startswith("The capital") else m.groups()[::-1]
        if city != CAPITAL[country]:
            assert city in CAPITAL.values() and city not in OTHER_SEATS.get(country, ()), text
        return city == CAPITAL[country], f"capital:{country}"
    if m := re.fullmatch(r"(.+) is in (.+)\.", text):
        country, continent = m.groups()
        country = country[0].lower() + country[1:] if country.startswith("The ") else country
        if continent != MAIN_CONTINENT[country]:
            assert continent not in ALSO_IN.get(country, set()), f"{text!r}: partly true, ambiguous"
        return continent == MAIN_CONTINENT[country], f"continent:{country}"
    raise AssertionError(f"no rule parses {text!r}")


def test_every_label_is_the_truth_of_its_text() -> None:
    statements = project_statements()
    wrong = [s.text for s in statements if judge(s)[0] != s.label]
    assert wrong == []


def test_groups_hold_one_fact_each_with_its_twins_and_rephrasings() -> None:
    statements = project_statements()
    fact_groups: dict[str, set[str]] = defaultdict(set)
    group_facts: dict[str, set[str]] = defaultdict(set)
    labels: dict[str, list[bool]] = defaultdict(list)
    for s in statements:
        _, fact = judge(s)
        fact_groups[fact].add(f"{s.topic}:{s.group}")
        group_facts[f"{s.topic}:{s.group}"].add(fact)
        labels[f"{s.topic}:{s.group}"].append(s.label)
    assert all(len(g) == 1 for g in fact_groups.values())  # 2 + 3 and 3 + 2 are one fact: one group
    assert all(len(f) == 1 for f in group_facts.values())
    assert all(sum(v) * 2 == len(v) for v in labels.values())  # each true statement with its false twin


def test_texts_are_sentences_written_once() -> None:
    statements = project_statements()
    assert len({" ".join(s.text.lower().split()) for s in statements}) == len(statements)
    assert all(s.text[0].isupper() or s.text[0].isdigit() for s in statements)
    assert not [s.text for s in statements if re.search(r"\b[Aa] (hour|[aeio]\w*)\b", s.text)]


def test_counts_and_balance_stated_in_the_docs() -> None:
    statements = project_statements()
    assert len(statements) == 670
    by_topic: dict[str, list[bool]] = defaultdict(list)
    for s in statements:
        by_topic[s.topic].append(s.label)
    assert {t: len(v) for t, v in by_topic.items()} == {
        "arithmetic": 198,
        "comparisons": 192,
        "units": 88,
        "geography": 192,
    }
    for k in range(0, len(statements), 8):  # any prefix of whole rounds is balanced and mixes the topics
        assert sum(s.label for s in statements[: k + 8]) * 2 == len(statements[: k + 8])


@pytest.mark.parametrize(
    ("text", "label"),
    [("A year has 366 days.", False), ("Chile is in Oceania.", False), ("3 + 2 = 6.", False)],
)
def test_the_judge_flags_ambiguous_items(text: str, label: bool) -> None:
    if text.startswith("3 + 2"):
        assert judge(Statement(text, label, "arithmetic")) == (False, "2+3")
        return
    with pytest.raises(AssertionError, match="ambiguous"):
        judge(Statement(text, label, "x"))
