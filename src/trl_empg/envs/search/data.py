"""Data of the search environment: Search-R1-format files, and an offline fictional world ("search-style").

File format (Search-R1's, itself FlashRAG's):

- corpus: JSON lines ``{"id": ..., "contents": "\\"Title\\"\\ntext"}``; the first line of ``contents``, unquoted, is
  the passage title (a passage without that line has no title);
- questions: ``.jsonl``, ``.json`` (a list of rows) or ``.parquet`` rows with ``question`` (str), ``golden_answers``
  (a non-empty list of str; Search-R1's processed parquet form ``reward_model.ground_truth.target`` is read when
  ``golden_answers`` is absent) and ``data_source`` (str, e.g. ``nq``). An optional ``metadata.gold_queries`` (list of
  str) is the expert's search queries, one per hop; the generated files carry it.

Every malformed file fails when it is read with an error naming the file, the row and the field, so an environment
never hits a missing key mid-episode.

The generated world is a deterministic function of (seed, scale): countries, cities, people, organisations and
works with made-up names (no model can answer from prior knowledge), linked by functional relations (a work's
creator and publisher, a person's birthplace and employer, an organisation's founder and headquarters, a city's
country, a country's capital) and carrying plain attributes (years, occupations, rivers, ...). Each entity has one
passage stating its own facts, so a k-hop question ("In which country was the creator of X born?") needs one
search per hop: each passage names the next entity to look up. Question templates are split into in-domain ones
(train / dev / test) and held-out ones (test only, the out-of-domain set), and the starting entities of the three
splits are disjoint, so no question appears in two splits.
"""

from __future__ import annotations

import json
import os
import random
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..base import EnvDataError

__all__ = [
    "Corpus",
    "Question",
    "TEMPLATES",
    "GENERATED_ID_SOURCE",
    "GENERATED_OOD_SOURCE",
    "generate_world",
    "write_generated",
    "load_corpus",
    "load_questions",
    "atomic_write_text",
]

#: data_source of generated questions from in-domain templates and from the held-out (out-of-domain) templates.
GENERATED_ID_SOURCE = "search-style"
GENERATED_OOD_SOURCE = "search-style-heldout"
#: Share of each entity type whose questions go to train / dev (the rest: test).
_SPLIT_SHARES = (0.7, 0.1)
#: Entities per type at scale 1.
_BASE_COUNTS = {"country": 12, "city": 60, "person": 240, "org": 60, "work": 240}


@dataclass
class Corpus:
    """Passages in index order: ids, titles (may be empty) and the full ``contents`` strings that are indexed."""

    ids: list[str] = field(default_factory=list)
    titles: list[str] = field(default_factory=list)
    contents: list[str] = field(default_factory=list)

    def text(self, i: int) -> str:
        """The passage body without its title line."""
        return self.contents[i].split("\n", 1)[1] if self.titles[i] else self.contents[i]


@dataclass(frozen=True)
class Question:
    """One task: the question, its golden answers, where it comes from and, when known, the expert's queries."""

    question: str
    golden_answers: tuple[str, ...]
    data_source: str
    gold_queries: tuple[str, ...] = ()
    template: str = ""


# ------------------------------------------------------------------------------------------------- the fictional world
_ONSETS = ["b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "br", "dr", "kr", "th", "sh", "st"]
_VOWELS = ["a", "e", "i", "o", "u", "ae", "ou"]
_CODAS = ["", "", "n", "r", "l", "s", "th", "k"]
_OCCUPATIONS = ["sculptor", "engineer", "botanist", "composer", "cartographer", "physician", "architect", "poet"]
_INDUSTRIES = ["shipping", "publishing", "mining", "textiles", "software", "brewing", "banking", "research"]
_ORG_KINDS = ["Institute", "Company", "Guild", "Foundation", "Works", "Society", "Records", "Press"]
_WORK_KINDS = {"novel": "written", "film": "directed", "album": "recorded", "painting": "painted"}
_ADJECTIVES = ["Silent", "Crimson", "Hollow", "Distant", "Golden", "Broken", "Hidden", "Winter", "Iron", "Pale"]


class _Names:
    """Made-up words, each handed out once, so every name token points at few passages."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.used: set[str] = set()

    def word(self, syllables: int | None = None) -> str:
        while True:
            count = syllables or self.rng.choice((2, 2, 3))
            parts = [self.rng.choice(_ONSETS) + self.rng.choice(_VOWELS) for _ in range(count)]
            candidate = ("".join(parts) + self.rng.choice(_CODAS)).capitalize()
            if candidate.lower() not in self.used:
                self.used.add(candidate.lower())
                return candidate


@dataclass
class _Entity:
    kind: str
    name: str
    facts: dict[str, Any] = field(default_factory=dict)  # relation -> _Entity, attribute -> str


def _build_entities(rng: random.Random, scale: int) -> dict[str, list[_Entity]]:
    names = _Names(rng)
    counts = {kind: count * scale for kind, count in _BASE_COUNTS.items()}
    world: dict[str, list[_Entity]] = {kind: [] for kind in counts}
    for _ in range(counts["country"]):
        facts = {"currency": names.word(2).lower(), "founded": str(rng.randint(1400, 1900))}
        world["country"].append(_Entity("country", names.word() + rng.choice(["ia", "land", "mark"]), facts))
    for i in range(counts["city"]):
        country = world["country"][i % counts["country"]] if i < counts["country"] else rng.choice(world["country"])
        facts = {"country": country, "founded": str(rng.randint(900, 1850)), "river": names.word(2)}
        world["city"].append(_Entity("city", names.word(), facts))
    for country in world["country"]:
        country.facts["capital"] = next(c for c in world["city"] if c.facts["country"] is country)
    first_names = [names.word(2) for _ in range(max(8, counts["person"] // 3))]
    for _ in range(counts["person"]):
        facts = {
            "birthplace": rng.choice(world["city"]),
            "born": str(rng.randint(1800, 1990)),
            "occupation": rng.choice(_OCCUPATIONS),
        }
        world["person"].append(_Entity("person", f"{rng.choice(first_names)} {names.word()}", facts))
    for _ in range(counts["org"]):
        facts = {
            "founder": rng.choice(world["person"]),
            "headquarters": rng.choice(world["city"]),
            "founded": str(rng.randint(1820, 2010)),
            "industry": rng.choice(_INDUSTRIES),
        }
        world["org"].append(_Entity("org", f"{names.word()} {rng.choice(_ORG_KINDS)}", facts))
    for person in world["person"]:
        person.facts["employer"] = rng.choice(world["org"])
    for _ in range(counts["work"]):
        kind = rng.choice(sorted(_WORK_KINDS))
        facts = {
            "creator": rng.choice(world["person"]),
            "publisher": rng.choice(world["org"]),
            "year": str(rng.randint(1850, 2020)),
            "work_kind": kind,
        }
        world["work"].append(_Entity("work", f"The {rng.choice(_ADJECTIVES)} {names.word()}", facts))
    return world


def _passage(entity: _Entity, rng: random.Random) -> str:
    """The entity's one passage: its own facts, naming each related entity (the next hop)."""
    f, name = entity.facts, entity.name
    if entity.kind == "country":
        return (
            f"{name} is a country whose capital is {f['capital'].name}. Its currency is the {f['currency']}. "
            f"{name} was founded in {f['founded']}."
        )
    if entity.kind == "city":
        first = rng.choice([f"{name} is a city in {f['country'].name}", f"{name} is a city of {f['country'].name}"])
        return f"{first}, founded in {f['founded']}. The {f['river']} river flows through {name}."
    if entity.kind == "person":
        surname = name.split()[-1]
        return f"{name} is a {f['occupation']} born in {f['born']} in {f['birthplace'].name}. " + rng.choice(
            [f"{surname} works for {f['employer'].name}.", f"{surname} is employed by {f['employer'].name}."]
        )
    if entity.kind == "org":
        return (
            f"{name} is a {f['industry']} organisation founded in {f['founded']} by {f['founder'].name}. "
            + rng.choice(
                [f"Its headquarters are in {f['headquarters'].name}.", f"It is based in {f['headquarters'].name}."]
            )
        )
    kind = f["work_kind"]
    article = "an" if kind[0] in "aeiou" else "a"
    return (
        f"{name} is {article} {kind} {_WORK_KINDS[kind]} by {f['creator'].name} in {f['year']}. "
        f"It was published by {f['publisher'].name}."
    )


@dataclass(frozen=True)
class Template:
    """A question pattern: start type, relations followed from the start entity, an optional final attribute."""

    id: str
    start: str
    relations: tuple[str, ...]
    attribute: str | None
    text: str  # formatted with {x}: the start entity's name
    held_out: bool = False

    def answers(self, end: Any) -> tuple[str, ...]:
        if self.attribute == "river":
            return (end, f"{end} river")
        return (end.name,) if isinstance(end, _Entity) else (end,)


#: In-domain templates (train / dev / test) and held-out ones (test only); hops = searches needed.
TEMPLATES: tuple[Template, ...] = (
    Template("work-creator", "work", ("creator",), None, 'Who created "{x}"?'),
    Template("person-birthplace", "person", ("birthplace",), None, "In which city was {x} born?"),
    Template("org-headquarters", "org", ("headquarters",), None, "In which city is {x} headquartered?"),
    Template("city-country", "city", ("country",), None, "Which country is the city of {x} in?"),
    Template("work-creator-birthplace", "work", ("creator", "birthplace"), None,
             'Where was the creator of "{x}" born?'),
    Template("person-employer-headquarters", "person", ("employer", "headquarters"), None,
             "In which city is the employer of {x} headquartered?"),
    Template("org-founder-born", "org", ("founder",), "born", "In what year was the founder of {x} born?"),
    Template("work-creator-birthplace-country", "work", ("creator", "birthplace", "country"), None,
             'In which country was the creator of "{x}" born?'),
    Template("person-employer-headquarters-country", "person", ("employer", "headquarters", "country"), None,
             "In which country is the organisation that employs {x} based?"),
    # Held out: relation paths and wordings never seen in training.
    Template("city-river", "city", (), "river", "Which river flows through {x}?", True),
    Template("work-publisher-headquarters", "work", ("publisher", "headquarters"), None,
             'The publisher of "{x}" is based in which city?', True),
    Template("person-employer-industry", "person", ("employer",), "industry",
             "What industry is the employer of {x} in?", True),
    Template("person-birthplace-country-capital", "person", ("birthplace", "country", "capital"), None,
             "What is the capital of the country where {x} was born?", True),
    Template("org-founder-birthplace-river", "org", ("founder", "birthplace"), "river",
             "Which river flows through the birthplace of the founder of {x}?", True),
)  # fmt: skip


def _question(template: Template, start: _Entity) -> Question:
    """Follow the template from ``start``: each entity whose passage must be read is one search (its name)."""
    node: Any = start
    queries = [start.name]
    for relation in template.relations:
        node = node.facts[relation]
        queries.append(node.name)
    if template.attribute is None:
        queries.pop()  # the last entity's name is the answer, read from the previous passage
    else:
        node = node.facts[template.attribute]
    source = GENERATED_OOD_SOURCE if template.held_out else GENERATED_ID_SOURCE
    return Question(template.text.format(x=start.name), template.answers(node), source, tuple(queries), template.id)


def generate_world(seed: int = 0, scale: int = 1) -> tuple[Corpus, dict[str, list[Question]]]:
    """The corpus (one passage per entity, in a fixed shuffled order) and each split's questions, shuffled.

    ``scale`` multiplies every entity count (about 612 passages at scale 1).
    """
    if scale < 1:
        raise ValueError(f"scale must be >= 1, got {scale}.")
    rng = random.Random(f"trl-empg-search-world-{seed}-{scale}")
    world = _build_entities(rng, scale)
    entities = [entity for kind in _BASE_COUNTS for entity in world[kind]]
    rng.shuffle(entities)
    corpus = Corpus()
    for i, entity in enumerate(entities):
        corpus.ids.append(str(i))
        corpus.titles.append(entity.name)
        corpus.contents.append(f'"{entity.name}"\n{_passage(entity, rng)}')
    splits: dict[str, list[Question]] = {"train": [], "dev": [], "test": []}
    for kind, members in world.items():
        order = list(members)
        rng.shuffle(order)
        n_train, n_dev = int(len(order) * _SPLIT_SHARES[0]), max(1, int(len(order) * _SPLIT_SHARES[1]))
        parts = {"train": order[:n_train], "dev": order[n_train : n_train + n_dev], "test": order[n_train + n_dev :]}
        for template in TEMPLATES:
            if template.start != kind:
                continue
            for split, starts in parts.items():
                if template.held_out and split != "test":
                    continue
                splits[split] += [_question(template, start) for start in starts]
    for questions in splits.values():
        rng.shuffle(questions)
    return corpus, splits


# ------------------------------------------------------------------------------------------------------- file I/O
def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file in the same folder and ``os.replace``: readers in other
    processes see either no file or the whole file, never a partial one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_generated(directory: Path, corpus: Corpus, splits: dict[str, list[Question]]) -> dict[str, Path]:
    """Write a generated world as Search-R1-format files (``corpus.jsonl``, ``{train,dev,test}.jsonl``), each
    atomically; returns their paths keyed ``corpus`` and by split."""
    paths = {"corpus": directory / "corpus.jsonl"}
    lines = [json.dumps({"id": i, "contents": c}) for i, c in zip(corpus.ids, corpus.contents)]
    atomic_write_text(paths["corpus"], "\n".join(lines) + "\n")
    for split, questions in splits.items():
        rows = [
            {
                "id": f"{split}_{i}",
                "question": q.question,
                "golden_answers": list(q.golden_answers),
                "data_source": q.data_source,
                "metadata": {"template": q.template, "gold_queries": list(q.gold_queries)},
            }
            for i, q in enumerate(questions)
        ]
        paths[split] = directory / f"{split}.jsonl"
        atomic_write_text(paths[split], "\n".join(json.dumps(row) for row in rows) + "\n")
    return paths


def _require_file(path: str | os.PathLike[str], what: str) -> Path:
    resolved = Path(path).expanduser()
    if not resolved.is_file():
        raise FileNotFoundError(f"Search {what} file {str(resolved)!r} does not exist.")
    return resolved


def load_corpus(path: str | os.PathLike[str]) -> Corpus:
    """Read a Search-R1 corpus JSONL file; every line needs ``id`` and a string ``contents``."""
    file = _require_file(path, "corpus")
    corpus = Corpus()
    with open(file, "rb") as f:  # streamed (a Wikipedia corpus is gigabytes), decoded line by line to name the line
        for line_no, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as error:
                raise EnvDataError(f"{file}:{line_no}: not UTF-8 text ({error.reason}).") from None
            if line.strip():
                _add_passage(corpus, _json_row(line, file, line_no), file, line_no)
    if not corpus.contents:
        raise EnvDataError(f"Search corpus file {str(file)!r} has no passages.")
    return corpus


def _add_passage(corpus: Corpus, row: dict[str, Any], file: Path, line_no: int) -> None:
    if "id" not in row:
        raise EnvDataError(f"{file}:{line_no}: corpus row has no 'id' field (expected {{'id', 'contents'}}).")
    contents = row.get("contents")
    if not isinstance(contents, str):
        raise EnvDataError(f"{file}:{line_no}: corpus field 'contents' is missing or not a string.")
    first, sep, rest = contents.partition("\n")
    titled = bool(sep) and len(first) >= 2 and first.startswith('"') and first.endswith('"')
    corpus.ids.append(str(row["id"]))
    corpus.titles.append(first[1:-1] if titled else "")
    corpus.contents.append(contents)


def _text(file: Path) -> str:
    try:
        return file.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        line = file.read_bytes()[: error.start].count(b"\n") + 1
        raise EnvDataError(f"{file}:{line}: not UTF-8 text ({error.reason} at byte {error.start}).") from None


def _json_row(line: str, file: Path, line_no: int) -> dict[str, Any]:
    try:
        row = json.loads(line)
    except json.JSONDecodeError as error:
        raise EnvDataError(f"{file}:{line_no}: not valid JSON at column {error.colno} ({error.msg}).") from None
    if not isinstance(row, dict):
        raise EnvDataError(f"{file}:{line_no}: expected a JSON object, got {type(row).__name__}.")
    return row


def _rows(file: Path) -> list[tuple[str, dict[str, Any]]]:
    """(location, row) pairs of a question file in any of the accepted formats."""
    if file.suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(file)
        except Exception as error:  # pyarrow's errors (ArrowInvalid, OSError) name neither the file nor the cause
            raise EnvDataError(f"{file}: not a readable Parquet file ({type(error).__name__}: {error}).") from None
        return [(f"{file} row {i}", row) for i, row in enumerate(table.to_pylist())]
    text = _text(file)
    if file.suffix == ".json" and text.lstrip().startswith("["):
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as error:
            raise EnvDataError(
                f"{file}:{error.lineno}: not valid JSON at column {error.colno} ({error.msg})."
            ) from None
        for i, row in enumerate(rows):
            if not isinstance(row, dict):
                raise EnvDataError(f"{file} row {i}: expected a JSON object, got {type(row).__name__}.")
        return [(f"{file} row {i}", row) for i, row in enumerate(rows)]
    lines = text.splitlines()
    return [(f"{file}:{n}", _json_row(line, file, n)) for n, line in enumerate(lines, 1) if line.strip()]


def _string_list(value: Any) -> list[str] | None:
    if isinstance(value, str):
        return [value]
    if isinstance(value, Sequence) and value and all(isinstance(v, str) for v in value):
        return list(value)
    return None


def _golden(row: dict[str, Any]) -> Any:
    if "golden_answers" in row:
        return row["golden_answers"]
    target = ((row.get("reward_model") or {}).get("ground_truth") or {}).get("target")
    return target


def load_questions(path: str | os.PathLike[str]) -> list[Question]:
    """Read a Search-R1 question file (``.jsonl``, ``.json`` or ``.parquet``) and validate every row."""
    file = _require_file(path, "questions")
    questions = []
    checks: list[tuple[str, Callable[[dict[str, Any]], Any], str]] = [
        ("question", lambda r: r.get("question"), "a non-empty string"),
        ("data_source", lambda r: r.get("data_source"), "a non-empty string"),
    ]
    for where, row in _rows(file):
        for name, get, expected in checks:
            value = get(row)
            if not isinstance(value, str) or not value.strip():
                raise EnvDataError(f"{where}: field {name!r} is missing or not {expected}.")
        golden = _string_list(_golden(row))
        if not golden:
            raise EnvDataError(
                f"{where}: field 'golden_answers' (or 'reward_model.ground_truth.target') is missing or not a "
                "non-empty list of strings."
            )
        metadata = row.get("metadata") if isinstance(row.get("metadata"), dict) else {}
        queries = metadata.get("gold_queries", [])
        if not isinstance(queries, list) or not all(isinstance(q, str) and q.strip() for q in queries):
            raise EnvDataError(f"{where}: field 'metadata.gold_queries' must be a list of non-empty strings.")
        template = metadata.get("template", "")
        questions.append(
            Question(row["question"].strip(), tuple(golden), row["data_source"], tuple(queries), str(template or ""))
        )
    if not questions:
        raise EnvDataError(f"Search questions file {str(file)!r} has no rows.")
    return questions
