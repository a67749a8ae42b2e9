"""The gate a new revision passes before it takes traffic (`validation:` per model): quality against a golden set,
determinism at temperature 0, speed against the SLO and the serving revision. Also the golden file's format, its
loading (errors name the file, line, entry and field) and the checks of one answer; fleet/gate.py asks the replicas.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator

from modelyard.spec.common import Strict

Task = Literal["chat", "embedding", "rerank"]


class QualitySpec(Strict):
    golden: str  # a YAML or JSONL file of entries, relative to the yard.yaml's folder
    min_pass_rate: Annotated[float, Field(gt=0, le=1)] = 1.0


class DeterminismSpec(Strict):
    prompts: Annotated[int, Field(ge=1, le=1000)] = 10
    repeats: Annotated[int, Field(ge=1, le=1000)] = 3
    concurrent: Annotated[int, Field(ge=1, le=1024)] = 4
    max_tokens: Annotated[int, Field(ge=1, le=16384)] = 32
    min_identical: Annotated[float, Field(ge=0, le=1)] = 1.0


class SpeedSpec(Strict):
    ttft_p90_s: Annotated[float, Field(gt=0)] | None = None  # embedding and rerank: the latency p90
    tpot_p90_s: Annotated[float, Field(gt=0)] | None = None
    max_slowdown: Annotated[float, Field(ge=0)] | None = None  # 0.10: at most 10% slower than the serving revision
    requests: Annotated[int, Field(ge=1, le=100_000)] = 20
    concurrency: Annotated[int, Field(ge=1, le=1024)] = 2
    max_tokens: Annotated[int, Field(ge=2, le=16384)] = 32


class ValidationSpec(Strict):
    quality: QualitySpec | None = None
    determinism: DeterminismSpec | None = None
    speed: SpeedSpec | None = None


# --- the golden file -------------------------------------------------------------------------------------------

CHECKS = ("contains", "not_contains", "regex", "exact", "json_schema", "number")
SCHEMA_KEYWORDS = frozenset({"type", "enum", "const", "properties", "required", "additionalProperties", "items",
                             "minItems", "maxItems", "minLength", "maxLength", "pattern", "minimum", "maximum",
                             "title", "description"})
SCHEMA_TYPES = ("object", "array", "string", "number", "integer", "boolean", "null")
NUMBER = re.compile(r"[-+]?(?:\d+(?:[.,]\d+)*(?:\.\d+)?|\.\d+)(?:[eE][-+]?\d+)?")


class GoldenError(Exception):
    """A golden file that cannot be used: each problem names the file, line, entry and field."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


class NumberCheck(Strict):
    value: float
    tolerance: Annotated[float, Field(ge=0)] = 0.0
    pick: Literal["any", "first", "last"] = "any"  # which number of the answer is compared


def _schema_problem(schema: Any, where: str) -> str | None:
    if not isinstance(schema, dict):
        return f"{where}: must be a mapping"
    for key, value in schema.items():
        if key not in SCHEMA_KEYWORDS:
            return f"{where}.{key}: not a supported JSON Schema keyword ({', '.join(sorted(SCHEMA_KEYWORDS))})"
        if key == "type" and not all(t in SCHEMA_TYPES for t in (value if isinstance(value, list) else [value])):
            return f"{where}.type: must be one of {', '.join(SCHEMA_TYPES)}"
        if key == "properties":
            if not isinstance(value, dict):
                return f"{where}.properties: must be a mapping"
            for name, sub in value.items():
                if problem := _schema_problem(sub, f"{where}.properties.{name}"):
                    return problem
        if key == "items" and (problem := _schema_problem(value, f"{where}.items")):
            return problem
        if key == "pattern":
            try:
                re.compile(str(value))
            except re.error as exc:
                return f"{where}.pattern: not a valid regular expression ({exc})"
    return None


class Expect(Strict):
    """What an answer must satisfy: every check given (at least one)."""

    contains: str | tuple[str, ...] | None = None  # every string appears
    not_contains: str | tuple[str, ...] | None = None  # none appears
    regex: str | None = None  # matches somewhere (re.search)
    exact: str | None = None  # the whole answer, whitespace at the ends stripped
    json_schema: dict[str, Any] | None = None  # the answer (``` fences stripped) is JSON that the schema accepts
    number: NumberCheck | None = None  # a number of the answer is within tolerance of value
    ignore_case: bool = False  # for contains, not_contains, regex and exact

    @field_validator("regex")
    @classmethod
    def _compiles(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"not a valid regular expression ({exc})") from None
        return value

    @field_validator("json_schema")
    @classmethod
    def _schema(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value is not None and (problem := _schema_problem(value, "json_schema")):
            raise ValueError(problem)
        return value

    @model_validator(mode="after")
    def _one_check(self) -> Expect:
        if all(getattr(self, name) is None for name in CHECKS):
            raise ValueError(f"give at least one check ({', '.join(CHECKS)})")
        return self


class ChatEntry(Strict):
    prompt: str | None = None
    messages: Annotated[tuple[dict[str, Any], ...], Field(min_length=1)] | None = None
    max_tokens: Annotated[int, Field(ge=1, le=16384)] = 64
    expect: Expect
    name: str | None = None

    @model_validator(mode="after")
    def _one_input(self) -> ChatEntry:
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("give exactly one of prompt or messages")
        return self

    def chat_messages(self) -> list[dict[str, Any]]:
        return list(self.messages) if self.messages is not None else [{"role": "user", "content": self.prompt}]


class EmbeddingEntry(Strict):
    """cosine(pair) > cosine(closer_than): the pair's texts are closer than the other two."""

    pair: tuple[str, ...]
    closer_than: tuple[str, ...]
    name: str | None = None

    @field_validator("pair", "closer_than")
    @classmethod
    def _two(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if len(value) != 2:
            raise ValueError(f"must be two texts, not {len(value)}")
        return value


class RerankEntry(Strict):
    query: str
    documents: Annotated[tuple[str, ...], Field(min_length=2)]
    top: Annotated[int, Field(ge=0)]  # the index of the document that must score highest
    name: str | None = None

    @model_validator(mode="after")
    def _top_in_range(self) -> RerankEntry:
        if self.top >= len(self.documents):
            raise ValueError(f"top: must be an index of documents (0 to {len(self.documents) - 1})")
        return self


GoldenEntry = ChatEntry | EmbeddingEntry | RerankEntry
ENTRY_TYPES: dict[str, type[ChatEntry] | type[EmbeddingEntry] | type[RerankEntry]] = {
    "chat": ChatEntry, "embedding": EmbeddingEntry, "rerank": RerankEntry}
ENTRY_SHAPES = {"chat": "prompt or messages, with expect", "embedding": "pair and closer_than",
                "rerank": "query, documents and top"}


@dataclass(frozen=True)
class GoldenSet:
    path: Path
    task: str
    entries: tuple[GoldenEntry, ...]


COMPARISONS = {"greater_than_equal": ">=", "greater_than": ">", "less_than_equal": "<=", "less_than": "<"}


def _entry_kind(raw: dict[str, Any]) -> str:
    if "pair" in raw or "closer_than" in raw:
        return "embedding"
    if "query" in raw or "documents" in raw or "top" in raw:
        return "rerank"
    return "chat"


def _error_text(error: Any) -> str:
    kind = error["type"]
    if kind == "missing":
        return "is required"
    if kind == "extra_forbidden":
        loc = error["loc"]
        if len(loc) >= 2 and loc[-2] == "expect":
            return f"unknown check (known: {', '.join(CHECKS)}, and ignore_case)"
        return "is not a known field"
    if kind == "value_error":
        return str((error.get("ctx") or {}).get("error", error["msg"]))
    if kind in COMPARISONS:
        return f"must be {COMPARISONS[kind]} {next(iter((error.get('ctx') or {'': '?'}).values()))}"
    return str(error["msg"])


def _dotted(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _read_entries(path: Path) -> list[tuple[int, Any]]:
    """The raw entries with their lines: YAML (a list) or JSONL (one object a line), by the file's extension."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise GoldenError([f"{path}: no such golden file"]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise GoldenError([f"{path}: cannot be read ({exc})"]) from None
    if path.suffix.lower() in (".jsonl", ".ndjson"):
        entries = []
        for number, line in enumerate(text.splitlines(), start=1):
            if line.strip():
                try:
                    entries.append((number, json.loads(line)))
                except json.JSONDecodeError as exc:
                    raise GoldenError([f"{path}:{number}: not valid JSON ({exc.msg})"]) from None
        return entries
    if path.suffix.lower() not in (".yaml", ".yml"):
        raise GoldenError([f"{path}: a golden file is .yaml, .yml or .jsonl"])
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        raise GoldenError([f"{where}: not valid YAML: {getattr(exc, 'problem', None) or exc}"]) from None
    if not isinstance(data, list) or not isinstance(node, yaml.SequenceNode):
        raise GoldenError([f"{path}: must be a list of entries"])
    return [(item.start_mark.line + 1, value) for item, value in zip(node.value, data, strict=True)]


def load_golden(path: Path, task: str) -> GoldenSet:
    """The golden set of a model of `task` (chat, embedding, rerank); GoldenError lists every problem."""
    problems: list[str] = []
    entries: list[GoldenEntry] = []
    raw_entries = _read_entries(path)
    if not raw_entries:
        raise GoldenError([f"{path}: has no entries"])
    for index, (line, raw) in enumerate(raw_entries):
        where = f"{path}:{line}: entries[{index}]"
        if not isinstance(raw, dict):
            problems.append(f"{where}: must be a mapping ({ENTRY_SHAPES[task]})")
            continue
        kind = _entry_kind(raw)
        if kind != task:
            problems.append(f"{where}: {'an' if kind == 'embedding' else 'a'} {kind} entry ({ENTRY_SHAPES[kind]}) "
                            f"in the golden set of a{'n' if task == 'embedding' else ''} {task} model "
                            f"(its entries: {ENTRY_SHAPES[task]})")
            continue
        try:
            entries.append(ENTRY_TYPES[task].model_validate(raw))
        except ValidationError as exc:
            for error in exc.errors():
                field = _dotted(tuple(error["loc"]))
                problems.append(f"{where}{'.' + field if field else ''}: {_error_text(error)}")
    if problems:
        raise GoldenError(problems)
    return GoldenSet(path=path, task=task, entries=tuple(entries))


# --- the checks of one answer ----------------------------------------------------------------------------------


def _strings(value: str | tuple[str, ...]) -> tuple[str, ...]:
    return (value,) if isinstance(value, str) else value


def _numbers(text: str) -> list[float]:
    out = []
    for match in NUMBER.findall(text):
        try:
            out.append(float(match.replace(",", "")))
        except ValueError:
            continue
    return out


def _json_of(text: str) -> Any:
    body = text.strip()
    fenced = re.fullmatch(r"```[A-Za-z]*\s*\n?(.*?)\n?```", body, re.DOTALL)
    return json.loads(fenced.group(1) if fenced else body)


def _type_ok(value: Any, name: str) -> bool:
    if name == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if name == "number":
        return isinstance(value, int | float) and not isinstance(value, bool)
    kinds: dict[str, type | tuple[type, ...]] = {"object": dict, "array": list, "string": str, "boolean": bool,
                                                 "null": type(None)}
    return isinstance(value, kinds[name])


def schema_problem(schema: dict[str, Any], value: Any, where: str = "$") -> str | None:
    """Why `value` does not satisfy `schema` (the JSON Schema subset in SCHEMA_KEYWORDS), or None."""
    types = schema.get("type")
    if types is not None and not any(_type_ok(value, t) for t in (types if isinstance(types, list) else [types])):
        return f"{where}: is not of type {types}"
    if "enum" in schema and value not in schema["enum"]:
        return f"{where}: is not one of {schema['enum']}"
    if "const" in schema and value != schema["const"]:
        return f"{where}: is not {schema['const']!r}"
    if isinstance(value, dict):
        for name in schema.get("required", ()):
            if name not in value:
                return f"{where}: has no {name!r}"
        properties = schema.get("properties", {})
        for name, item in value.items():
            if name in properties:
                if problem := schema_problem(properties[name], item, f"{where}.{name}"):
                    return problem
            elif schema.get("additionalProperties") is False:
                return f"{where}: has {name!r}, which the schema does not allow"
    if isinstance(value, list):
        if len(value) < schema.get("minItems", 0) or len(value) > schema.get("maxItems", math.inf):
            return f"{where}: has {len(value)} items"
        for position, item in enumerate(value):
            if "items" in schema and (problem := schema_problem(schema["items"], item, f"{where}[{position}]")):
                return problem
    if isinstance(value, str):
        if len(value) < schema.get("minLength", 0) or len(value) > schema.get("maxLength", math.inf):
            return f"{where}: has {len(value)} characters"
        if "pattern" in schema and not re.search(str(schema["pattern"]), value):
            return f"{where}: does not match {schema['pattern']!r}"
    if isinstance(value, int | float) and not isinstance(value, bool):
        if value < schema.get("minimum", -math.inf) or value > schema.get("maximum", math.inf):
            return f"{where}: {value} is out of range"
    return None


def _number_problem(check: NumberCheck, text: str) -> str | None:
    numbers = _numbers(text)
    if not numbers:
        return "number: the answer has no number"
    picked = numbers if check.pick == "any" else [numbers[0] if check.pick == "first" else numbers[-1]]
    if any(abs(n - check.value) <= check.tolerance for n in picked):
        return None
    return f"number: {check.pick} of {numbers[:8]} is not within {check.tolerance:g} of {check.value:g}"


def answer_problem(expect: Expect, text: str) -> str | None:
    """Why a chat answer fails its checks (the first failing one), or None when it passes them all."""
    def fold(value: str) -> str:
        return value.lower() if expect.ignore_case else value

    answer = fold(text)
    if expect.contains is not None:
        missing = [s for s in _strings(expect.contains) if fold(s) not in answer]
        if missing:
            return f"contains: {missing[0]!r} is not in the answer"
    if expect.not_contains is not None:
        found = [s for s in _strings(expect.not_contains) if fold(s) in answer]
        if found:
            return f"not_contains: {found[0]!r} is in the answer"
    if expect.regex is not None and not re.search(expect.regex, text, re.IGNORECASE if expect.ignore_case else 0):
        return f"regex: {expect.regex!r} does not match"
    if expect.exact is not None and answer.strip() != fold(expect.exact).strip():
        return f"exact: the answer is not {expect.exact!r}"
    if expect.json_schema is not None:
        try:
            value = _json_of(text)
        except ValueError:
            return "json_schema: the answer is not JSON"
        if problem := schema_problem(expect.json_schema, value):
            return f"json_schema: {problem}"
    if expect.number is not None:
        return _number_problem(expect.number, text)
    return None


def cosine(a: list[float], b: list[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    norm = math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b))
    return dot / norm if norm else 0.0
