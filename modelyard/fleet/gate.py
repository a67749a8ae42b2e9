"""The gate a new revision's replicas pass before they take traffic: the checks of a model's `validation:`
(spec/validation.py) run against the candidate replicas and, where it compares, the serving ones.

`run_gate` never raises for what a replica does: a refused connection, a timeout, an error answer or an answer
without a result fails the check it happened in, with the reason."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Hashable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import aiohttp
import numpy as np
import orjson

from modelyard.bench.sse import SSEBuffer
from modelyard.engines import get_engine
from modelyard.spec.schema import AnyModel
from modelyard.spec.validation import (
    ChatEntry,
    DeterminismSpec,
    EmbeddingEntry,
    GoldenEntry,
    GoldenError,
    GoldenSet,
    QualitySpec,
    RerankEntry,
    SpeedSpec,
    answer_problem,
    cosine,
    load_golden,
)

NONE_CONFIGURED = "none configured"
EXCERPT = 200
BUILTIN_PROMPTS = (
    "What is the capital of France?", "Name three primary colours.", "What is 2+2?", "Say hello in Spanish.",
    "Write one sentence about the sea.", "List the days of the week.", "What colour is the sky on a clear day?",
    "Give a synonym for happy.", "How many legs does a spider have?", "Write a haiku about autumn.",
    "What is the opposite of cold?", "Name a fruit that is yellow.", "Count from one to five.",
    "What do bees make?", "Describe a cat in one sentence.", "What is water made of?", "Name a planet.",
    "Translate 'thank you' into French.", "What is the largest ocean?", "Tell me a fact about the moon.",
)
BUILTIN_TEXTS = (
    "The cat sits on the mat.", "Stock markets fell sharply today.", "A recipe for tomato soup.",
    "The train leaves at nine in the morning.", "Quantum computers use qubits.", "She plays the violin.",
    "Rain is expected over the weekend.", "The library opens at ten.", "Mountains covered in snow.",
    "He fixed the bicycle's flat tyre.",
)
BUILTIN_RERANK = (
    ("What do cats eat?", ("Cats eat meat and fish.", "The stock market closed higher.", "Paris is in France.")),
    ("When does the train leave?", ("Bread is made from flour.", "The train leaves at nine.", "Cats purr.")),
    ("Where is Paris?", ("Paris is the capital of France.", "Soup is hot.", "Violins have four strings.")),
)


@dataclass(frozen=True)
class CheckResult:
    name: str
    passed: bool
    summary: str
    details: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "passed": self.passed, "summary": self.summary, "details": self.details}


@dataclass(frozen=True)
class GateReport:
    passed: bool
    checks: list[CheckResult]

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready (stored with the revision)."""
        return {"passed": self.passed, "checks": [check.as_dict() for check in self.checks]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GateReport:
        checks = [CheckResult(c["name"], bool(c["passed"]), c["summary"], c.get("details", {}))
                  for c in data.get("checks", [])]
        return cls(passed=bool(data["passed"]), checks=checks)

    def summary(self) -> str:
        lines = [f"gate: {'passed' if self.passed else 'FAILED'}"]
        lines += [f"  {check.name}: {'ok' if check.passed else 'FAILED'}: {check.summary}" for check in self.checks]
        return "\n".join(lines)


class ReplicaError(Exception):
    """A replica did not answer a request with a result (refused, timed out, an error answer, no result)."""


def _why(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def _excerpt(text: str) -> str:
    return text if len(text) <= EXCERPT else text[:EXCERPT] + "..."


@dataclass(frozen=True)
class StreamTiming:
    ttft_s: float
    tpot_s: float | None  # None with fewer than 2 tokens
    latency_s: float


@dataclass(frozen=True)
class GateClient:
    """Requests of the gate to one model's replicas, by base URL (http://host:port, no /v1)."""

    session: aiohttp.ClientSession
    model_name: str
    headers: dict[str, str]
    convert: Callable[[str, bytes], bytes]

    async def post(self, url: str, path: str, body: dict[str, Any]) -> Any:
        headers = {"Content-Type": "application/json", **self.headers}
        try:
            async with self.session.post(url + path, data=orjson.dumps({"model": self.model_name, **body}),
                                         headers=headers) as resp:
                raw, status = await resp.read(), resp.status
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise ReplicaError(f"{url}: {path} failed: {_why(exc)}") from None
        if status != 200:
            raise ReplicaError(f"{url}: {path} answered {status}: {raw[:EXCERPT].decode(errors='replace')}")
        try:
            return orjson.loads(self.convert(path, raw))
        except orjson.JSONDecodeError:
            raise ReplicaError(f"{url}: {path} answered something that is not JSON") from None

    async def chat(self, url: str, messages: list[dict[str, Any]], max_tokens: int) -> str:
        answer = await self.post(url, "/v1/chat/completions",
                                 {"messages": messages, "max_tokens": max_tokens, "temperature": 0})
        try:
            content = answer["choices"][0]["message"].get("content")
        except (KeyError, IndexError, TypeError, AttributeError):
            raise ReplicaError(f"{url}: /v1/chat/completions answered without a choice") from None
        return content if isinstance(content, str) else ""

    async def embed(self, url: str, texts: list[str]) -> list[list[float]]:
        answer = await self.post(url, "/v1/embeddings", {"input": texts, "encoding_format": "float"})
        data = answer.get("data") if isinstance(answer, dict) else None
        if not isinstance(data, list) or len(data) != len(texts):
            raise ReplicaError(f"{url}: /v1/embeddings answered without {len(texts)} vector(s)")
        try:
            ordered = sorted(data, key=lambda item: int(item.get("index", 0)))
            return [[float(x) for x in item["embedding"]] for item in ordered]
        except (KeyError, TypeError, ValueError, AttributeError):
            raise ReplicaError(f"{url}: /v1/embeddings answered vectors that are not lists of numbers") from None

    async def rerank(self, url: str, query: str, documents: list[str]) -> list[float]:
        answer = await self.post(url, "/v1/rerank", {"query": query, "documents": documents})
        results = answer.get("results") if isinstance(answer, dict) else None
        scores: dict[int, float] = {}
        try:
            for item in results or []:
                scores[int(item["index"])] = float(item["relevance_score"])
        except (KeyError, TypeError, ValueError):
            raise ReplicaError(f"{url}: /v1/rerank answered results without index and relevance_score") from None
        if sorted(scores) != list(range(len(documents))):
            raise ReplicaError(f"{url}: /v1/rerank did not score each of the {len(documents)} documents")
        return [scores[i] for i in range(len(documents))]

    async def stream(self, url: str, messages: list[dict[str, Any]], max_tokens: int) -> StreamTiming:
        """One streamed chat completion, timed as `modelyard bench` does: TTFT at the first chunk with content,
        TPOT between it and the last over the tokens after the first."""
        body = {"messages": messages, "max_tokens": max_tokens, "temperature": 0, "stream": True,
                "stream_options": {"include_usage": True}}
        state = _StreamState(time.perf_counter())
        try:
            await self._stream_once(url, orjson.dumps({"model": self.model_name, **body}), state)
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise ReplicaError(f"{url}: streamed /v1/chat/completions failed: {_why(exc)}") from None
        if not state.chunks:
            raise ReplicaError(f"{url}: the stream ended without content")
        count = state.tokens if state.tokens is not None else state.chunks
        tpot = (state.last - state.first) / (count - 1) if count > 1 else None
        return StreamTiming(ttft_s=state.first - state.start, tpot_s=tpot, latency_s=state.last - state.start)

    async def _stream_once(self, url: str, data: bytes, state: _StreamState) -> None:
        headers = {"Content-Type": "application/json", **self.headers}
        async with self.session.post(url + "/v1/chat/completions", headers=headers, data=data) as resp:
            if resp.status != 200:
                raw = await resp.content.read(EXCERPT)
                raise ReplicaError(f"{url}: streamed /v1/chat/completions answered {resp.status}: "
                                   f"{raw.decode(errors='replace')}")
            buffer = SSEBuffer()
            async for chunk in resp.content.iter_any():
                for event in buffer.feed(chunk):
                    if event.error:
                        raise ReplicaError(f"{url}: the stream failed: {event.error[:EXCERPT]}")
                    if event.usage is not None and isinstance(event.usage.get("completion_tokens"), int):
                        state.tokens = int(event.usage["completion_tokens"])
                    if event.has_content:
                        state.last = time.perf_counter()
                        state.first = state.first or state.last
                        state.chunks += 1


@dataclass
class _StreamState:
    start: float
    first: float = 0.0
    last: float = 0.0
    chunks: int = 0
    tokens: int | None = None


def _golden(quality: QualitySpec | None, spec_dir: Path, task: str) -> GoldenSet | GoldenError | None:
    if quality is None:
        return None
    path = Path(quality.golden)
    try:
        return load_golden(path if path.is_absolute() else spec_dir / path, task)
    except GoldenError as exc:
        return exc


async def _judge(client: GateClient, url: str, entry: GoldenEntry) -> tuple[str | None, str]:
    """(why the entry fails on the replica or None, what the replica answered)."""
    if isinstance(entry, ChatEntry):
        answer = await client.chat(url, entry.chat_messages(), entry.max_tokens)
        return answer_problem(entry.expect, answer), answer
    if isinstance(entry, EmbeddingEntry):
        a, b, c, d = await client.embed(url, [*entry.pair, *entry.closer_than])
        near, far = cosine(a, b), cosine(c, d)
        problem = None if near > far else f"cosine(pair) {near:.4f} is not > cosine(closer_than) {far:.4f}"
        return problem, f"cosine(pair) {near:.4f}, cosine(closer_than) {far:.4f}"
    assert isinstance(entry, RerankEntry)
    scores = await client.rerank(url, entry.query, list(entry.documents))
    best = max(range(len(scores)), key=scores.__getitem__)
    return (None if best == entry.top else f"the top document is {best}, not {entry.top}"), f"scores {scores}"


def _entry_label(index: int, entry: GoldenEntry) -> str:
    if entry.name:
        return entry.name
    if isinstance(entry, ChatEntry):
        return _excerpt(entry.prompt if entry.prompt is not None else str(entry.chat_messages()[-1].get("content")))
    return _excerpt(entry.query if isinstance(entry, RerankEntry) else " / ".join(entry.pair))


async def check_quality(client: GateClient, spec: QualitySpec, golden: GoldenSet | GoldenError,
                        candidates: Sequence[str]) -> CheckResult:
    if isinstance(golden, GoldenError):
        return CheckResult("quality", False, f"the golden set cannot be used: {golden.problems[0]}",
                           {"golden": spec.golden, "errors": golden.problems})

    async def one_replica(url: str) -> list[dict[str, Any]]:
        results = []
        for index, entry in enumerate(golden.entries):
            row: dict[str, Any] = {"entry": index, "label": _entry_label(index, entry), "replica": url}
            try:
                problem, answer = await _judge(client, url, entry)
                row.update(passed=problem is None, reason=problem, answer=_excerpt(answer))
            except ReplicaError as exc:
                row.update(passed=False, reason=None, error=str(exc))
            results.append(row)
        return results

    rows = [row for rows in await asyncio.gather(*(one_replica(url) for url in candidates)) for row in rows]
    errors = [row["error"] for row in rows if "error" in row]
    passed = sum(1 for row in rows if row["passed"])
    rate = passed / len(rows) if rows else 0.0
    details = {"golden": spec.golden, "entries": len(golden.entries), "replicas": list(candidates),
               "passed": passed, "total": len(rows), "pass_rate": rate, "min_pass_rate": spec.min_pass_rate,
               "failures": [row for row in rows if not row["passed"] and "error" not in row], "errors": errors,
               "results": rows}
    summary = f"{passed}/{len(rows)} answers pass ({rate:.0%}; needs {spec.min_pass_rate:.0%})"
    if errors:
        return CheckResult("quality", False, f"a candidate failed: {errors[0]}", details)
    return CheckResult("quality", rate >= spec.min_pass_rate, summary, details)


Ask = Callable[[str], Awaitable[Hashable]]


def _determinism_items(client: GateClient, task: str, spec: DeterminismSpec,
                       golden: GoldenSet | GoldenError | None) -> list[tuple[str, Ask]]:
    entries = golden.entries if isinstance(golden, GoldenSet) else ()
    if task == "embedding":
        texts = list(dict.fromkeys([t for e in entries if isinstance(e, EmbeddingEntry)
                                    for t in (*e.pair, *e.closer_than)] + list(BUILTIN_TEXTS)))
        return [(_excerpt(text), _embed_ask(client, text)) for text in texts[:spec.prompts]]
    if task == "rerank":
        pairs = [(e.query, e.documents) for e in entries if isinstance(e, RerankEntry)] + list(BUILTIN_RERANK)
        return [(_excerpt(query), _rerank_ask(client, query, list(docs))) for query, docs in pairs[:spec.prompts]]
    chats = [(_entry_label(i, e), e.chat_messages()) for i, e in enumerate(entries) if isinstance(e, ChatEntry)]
    chats += [(prompt, [{"role": "user", "content": prompt}]) for prompt in BUILTIN_PROMPTS]
    return [(label, _chat_ask(client, messages, spec.max_tokens)) for label, messages in chats[:spec.prompts]]


def _chat_ask(client: GateClient, messages: list[dict[str, Any]], max_tokens: int) -> Ask:
    async def ask(url: str) -> Hashable:
        return await client.chat(url, messages, max_tokens)
    return ask


def _embed_ask(client: GateClient, text: str) -> Ask:
    async def ask(url: str) -> Hashable:
        return tuple((await client.embed(url, [text]))[0])
    return ask


def _rerank_ask(client: GateClient, query: str, documents: list[str]) -> Ask:
    async def ask(url: str) -> Hashable:
        return tuple(await client.rerank(url, query, documents))
    return ask


def identical_share(answers: Sequence[Hashable]) -> float:
    """The share of answers identical to the most common one (1.0 for none)."""
    return Counter(answers).most_common(1)[0][1] / len(answers) if answers else 1.0


def _stats(values: Sequence[float]) -> dict[str, float]:
    return {"min": min(values), "mean": sum(values) / len(values)} if values else {"min": 1.0, "mean": 1.0}


async def _ask_phases(ask: Ask, spec: DeterminismSpec, candidates: Sequence[str], serving: Sequence[str],
                      serving_errors: list[str]) -> dict[str, list[Hashable]]:
    """One prompt's answers: repeated alone on the first candidate, then concurrently there, then once on every
    replica. A candidate's failure raises ReplicaError; a serving replica's is noted and skipped."""
    alone = [await ask(candidates[0]) for _ in range(spec.repeats)]
    results = await asyncio.gather(*(ask(candidates[0]) for _ in range(spec.concurrent)), return_exceptions=True)
    failed = next((r for r in results if isinstance(r, BaseException)), None)
    if failed is not None:
        raise failed
    concurrent = [r for r in results if not isinstance(r, BaseException)]
    across = [await ask(url) for url in candidates]
    for url in serving:
        try:
            across.append(await ask(url))
        except ReplicaError as exc:
            serving_errors.append(str(exc))
    return {"alone": alone, "concurrent": concurrent, "replicas": across}


async def check_determinism(client: GateClient, task: str, spec: DeterminismSpec,
                            golden: GoldenSet | GoldenError | None, candidates: Sequence[str],
                            serving: Sequence[str]) -> CheckResult:
    items = _determinism_items(client, task, spec, golden)
    serving_errors: list[str] = []
    rows: list[dict[str, Any]] = []
    details: dict[str, Any] = {"prompts": len(items), "repeats": spec.repeats, "concurrent": spec.concurrent,
                               "replicas": [*candidates, *serving], "min_identical": spec.min_identical}
    for label, ask in items:
        try:
            phases = await _ask_phases(ask, spec, candidates, serving, serving_errors)
        except ReplicaError as exc:
            return CheckResult("determinism", False, f"a candidate failed: {exc}", {**details, "errors": [str(exc)]})
        pooled = [answer for answers in phases.values() for answer in answers]
        row: dict[str, Any] = {"prompt": label, "answers": len(pooled), "distinct": len(set(pooled)),
                               "identical": identical_share(pooled)}
        row.update({phase: identical_share(answers) for phase, answers in phases.items()})
        most_common = Counter(pooled).most_common(1)[0][0]
        if task == "chat":
            row["most_common"] = _excerpt(str(most_common))
        elif task == "embedding":  # how far the others are: 1.0 when all are identical
            vectors = [list(cast(tuple[float, ...], answer)) for answer in pooled]
            row["min_cosine"] = min(cosine(vectors[pooled.index(most_common)], v) for v in vectors)
        rows.append(row)
    overall = _stats([row["identical"] for row in rows])
    details.update(identical=overall, per_prompt=rows, serving_errors=serving_errors,
                   phases={phase: _stats([row[phase] for row in rows]) for phase in ("alone", "concurrent",
                                                                                     "replicas")})
    passed = overall["mean"] >= spec.min_identical
    summary = (f"identical answers per prompt: mean {overall['mean']:.0%}, min {overall['min']:.0%} over "
               f"{len(rows)} prompt(s) (needs a mean >= {spec.min_identical:.0%}); alone "
               f"{details['phases']['alone']['mean']:.0%}, concurrent {details['phases']['concurrent']['mean']:.0%}, "
               f"across replicas {details['phases']['replicas']['mean']:.0%}")
    if serving_errors:
        summary += f"; {len(serving_errors)} request(s) to the serving replicas failed"
    return CheckResult("determinism", passed, summary, details)


def _p90(values: Sequence[float]) -> float | None:
    return float(np.percentile(np.asarray(values, dtype=np.float64), 90)) if values else None


@dataclass
class _Side:
    """One revision's share of the speed run: the replicas it sends to and what it measured."""

    urls: Sequence[str]
    first: list[float] = field(default_factory=list)  # TTFT (chat) or latency (embedding, rerank)
    tpot: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def result(self, task: str) -> dict[str, Any]:
        ok = len(self.first)
        out: dict[str, Any] = {"replicas": list(self.urls), "requests": ok + len(self.errors), "ok": ok,
                               "ttft_p90_s" if task == "chat" else "latency_p90_s": _p90(self.first),
                               "errors": self.errors[:10]}
        if task == "chat":
            out["tpot_p90_s"] = _p90(self.tpot)
        return out


async def _timed(client: GateClient, task: str, side: _Side, index: int, prompts: Sequence[list[dict[str, Any]]],
                 max_tokens: int, record: bool = True) -> None:
    url, messages = side.urls[index % len(side.urls)], prompts[index % len(prompts)]
    try:
        if task == "chat":
            timing = await client.stream(url, messages, max_tokens)
            first, tpot = timing.ttft_s, timing.tpot_s
        else:
            start, text = time.perf_counter(), str(messages[0]["content"])
            await (client.embed(url, [text]) if task == "embedding"
                   else client.rerank(url, text, list(BUILTIN_RERANK[0][1])))
            first, tpot = time.perf_counter() - start, None
    except ReplicaError as exc:
        if record:
            side.errors.append(str(exc))
        return
    if record:
        side.first.append(first)
        if tpot is not None:
            side.tpot.append(tpot)


async def _speed_run(client: GateClient, task: str, spec: SpeedSpec, sides: list[_Side],
                     prompts: Sequence[list[dict[str, Any]]]) -> None:
    """`spec.requests` requests a side, in rounds of `spec.concurrency` at once over its replicas in turn; the
    sides take turns round by round (the first to go alternates), so each round has the machine to itself and a
    drift of the machine's speed falls on both. One unmeasured request per replica first."""
    for side in sides:
        for index in range(len(side.urls)):
            await _timed(client, task, side, index, prompts, spec.max_tokens, record=False)
    for round_number, start in enumerate(range(0, spec.requests, spec.concurrency)):
        indices = range(start, min(start + spec.concurrency, spec.requests))
        for side in sides if round_number % 2 == 0 else sides[::-1]:
            await asyncio.gather(*(_timed(client, task, side, i, prompts, spec.max_tokens) for i in indices))


def _speed_problems(task: str, spec: SpeedSpec, cand: dict[str, Any], serv: dict[str, Any] | None) -> list[str]:
    problems: list[str] = []
    first = "ttft_p90_s" if task == "chat" else "latency_p90_s"
    metrics = (first, "tpot_p90_s") if task == "chat" else (first,)
    limits = {first: spec.ttft_p90_s, "tpot_p90_s": spec.tpot_p90_s}
    for metric in metrics:
        value, limit = cand.get(metric), limits[metric]
        if limit is not None and (value is None or value > limit):
            problems.append(f"{metric} {_secs(value)} is over the SLO {limit:g} s")
        base = serv.get(metric) if serv is not None and not serv["errors"] else None
        if spec.max_slowdown is not None and base is not None and value is not None:
            if value > base * (1 + spec.max_slowdown):
                problems.append(f"{metric} {_secs(value)} is more than {spec.max_slowdown:.0%} over the serving "
                                f"revision's {_secs(base)}")
    return problems


def _secs(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f} s"


def _speed_prompts(task: str, golden: GoldenSet | GoldenError | None) -> list[list[dict[str, Any]]]:
    entries = golden.entries if isinstance(golden, GoldenSet) and task == "chat" else ()
    chats = [e.chat_messages() for e in entries if isinstance(e, ChatEntry)]
    texts = BUILTIN_PROMPTS if task == "chat" else BUILTIN_TEXTS
    return chats or [[{"role": "user", "content": text}] for text in texts]


async def check_speed(client: GateClient, task: str, spec: SpeedSpec, golden: GoldenSet | GoldenError | None,
                      candidates: Sequence[str], serving: Sequence[str]) -> CheckResult:
    sides = [_Side(candidates)] + ([_Side(serving)] if serving else [])
    await _speed_run(client, task, spec, sides, _speed_prompts(task, golden))
    cand, serv = sides[0].result(task), (sides[1].result(task) if serving else None)
    details: dict[str, Any] = {
        "candidate": cand, "serving": serv, "concurrency": spec.concurrency, "max_tokens": spec.max_tokens,
        "limits": {"ttft_p90_s": spec.ttft_p90_s, "tpot_p90_s": spec.tpot_p90_s, "max_slowdown": spec.max_slowdown}}
    if cand["errors"]:
        return CheckResult("speed", False, f"a candidate failed: {cand['errors'][0]}", details)
    problems = _speed_problems(task, spec, cand, serv)
    details["problems"] = problems
    metrics = ("ttft_p90_s", "tpot_p90_s") if task == "chat" else ("latency_p90_s",)
    names = {"ttft_p90_s": "TTFT", "tpot_p90_s": "TPOT", "latency_p90_s": "latency"}
    parts = [f"{names[m]} p90 {_secs(cand[m])}" + (f" (serving {_secs(serv[m])})" if serv else "") for m in metrics]
    summary = ", ".join(parts)
    if serv is not None and serv["errors"]:
        summary += f"; the serving replicas failed {len(serv['errors'])} request(s): no comparison"
    return CheckResult("speed", not problems, "; ".join(problems) if problems else summary, details)


def _client_for(model: AnyModel, session: aiohttp.ClientSession, headers: dict[str, str] | None,
                upstream_model: str | None) -> GateClient:
    engine = get_engine(model.engine)
    return GateClient(session=session, model_name=upstream_model or engine.upstream_model(model) or model.name,
                      headers=dict(engine.headers(model) if headers is None else headers), convert=engine.answer_body)


async def run_gate(model: AnyModel, spec_dir: Path, candidates: list[str], serving: list[str],
                   headers: dict[str, str] | None = None, upstream_model: str | None = None) -> GateReport:
    """The model's `validation:` against `candidates` (base URLs of the new replicas), comparing with `serving`
    (those of the revision serving now; may be empty). `headers` and `upstream_model` default to what the model's
    engine adapter says its replicas take (pass the gateway's key and the model's name to go through a gateway)."""
    validation = model.validation
    if validation is None or (validation.quality, validation.determinism, validation.speed) == (None, None, None):
        return GateReport(True, [CheckResult(NONE_CONFIGURED, True, "the model has no validation: configured")])
    if not candidates:
        return GateReport(False, [CheckResult("candidates", False, "no candidate replica to check")])
    candidates, serving = [_base(u) for u in candidates], [_base(u) for u in serving]
    task = get_engine(model.engine).task(model).value
    golden = _golden(validation.quality, spec_dir, task)
    timeout = aiohttp.ClientTimeout(total=model.timeouts.total_s, sock_connect=model.timeouts.connect_s)
    checks: list[CheckResult] = []
    # a connection per request: llama-server closes some kept-alive connections unannounced, and a request on one
    # would fail as if the replica had; the gate's load is light, and both revisions pay the same
    connector = aiohttp.TCPConnector(force_close=True)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
        client = _client_for(model, session, headers, upstream_model)
        if validation.quality is not None:
            assert golden is not None
            checks.append(await check_quality(client, validation.quality, golden, candidates))
        if validation.determinism is not None:
            checks.append(await check_determinism(client, task, validation.determinism, golden, candidates, serving))
        if validation.speed is not None:
            checks.append(await check_speed(client, task, validation.speed, golden, candidates, serving))
    return GateReport(all(check.passed for check in checks), checks)


def _base(url: str) -> str:
    """A replica's base URL: no trailing slash, no /v1 (the gate adds the paths)."""
    url = url.rstrip("/")
    return url[:-3] if url.endswith("/v1") else url
