from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

Message = dict[str, Any]
Endpoint = Literal["chat", "completions", "embeddings", "rerank"]
ENDPOINTS: tuple[Endpoint, ...] = ("chat", "completions", "embeddings", "rerank")
STREAMED_ENDPOINTS: tuple[Endpoint, ...] = ("chat", "completions")
STREAMED_ONLY_COLUMNS = ("ttft_ms", "tpot_ms", "content_chunks", "output_tokens", "output_tokens_source")


def is_streamed(endpoint: str) -> bool:
    """Chat and completions stream tokens (TTFT, TPOT, ITL); embeddings and rerank answer in one body."""
    return endpoint in STREAMED_ENDPOINTS


@dataclass(frozen=True)
class Prompt:
    """One request's input: chat messages (the completions endpoint flattens them to text)."""

    messages: tuple[Message, ...]
    max_tokens: int
    prompt_tokens_estimate: int
    group: str = ""

    def as_text(self) -> str:
        return "\n\n".join(str(m.get("content", "")) for m in self.messages)


@dataclass(frozen=True)
class Batch:
    """One embeddings request's texts, or one rerank request's query and the documents to score against it."""

    texts: tuple[str, ...]
    prompt_tokens_estimate: int
    query: str = ""
    group: str = ""


Work = Prompt | Batch


@dataclass
class RequestRecord:
    """What the client saw for one request. Times are seconds; `start_s`/`done_s` from the load level's start."""

    target: str
    level: str
    index: int
    start_s: float = 0.0
    done_s: float = 0.0
    success: bool = False
    cancelled: bool = False
    error: str = ""
    status: int = 0
    ttft: float = 0.0
    latency: float = 0.0
    itl: list[float] = field(default_factory=list)
    content_chunks: int = 0
    output_tokens: int = 0
    output_tokens_source: str = ""
    prompt_tokens: int = 0
    prompt_tokens_source: str = ""
    queue_s: float = 0.0
    retries: int = 0
    group: str = ""
    inputs: int = 0

    def as_row(self, streamed: bool = True) -> dict[str, Any]:
        """Flat form for CSV/JSON (ITL list kept only in JSON). An embeddings or rerank request's row has `inputs`
        (texts embedded, documents scored) instead of the token timings, which only streamed requests have."""
        row = {
            "target": self.target,
            "level": self.level,
            "index": self.index,
            "success": self.success,
            "cancelled": self.cancelled,
            "status": self.status,
            "error": self.error[:300],
            "start_s": round(self.start_s, 6),
            "done_s": round(self.done_s, 6),
            "queue_ms": round(self.queue_s * 1000, 3),
            "ttft_ms": round(self.ttft * 1000, 3),
            "e2el_ms": round(self.latency * 1000, 3),
            "tpot_ms": round(self.tpot() * 1000, 3),
            "content_chunks": self.content_chunks,
            "output_tokens": self.output_tokens,
            "output_tokens_source": self.output_tokens_source,
            "prompt_tokens": self.prompt_tokens,
            "prompt_tokens_source": self.prompt_tokens_source,
            "retries": self.retries,
            "group": self.group,
        }
        if not streamed:
            for key in STREAMED_ONLY_COLUMNS:
                del row[key]
            row["inputs"] = self.inputs
        return row

    def tpot(self) -> float:
        if not self.success or self.output_tokens <= 1:
            return 0.0
        return (self.latency - self.ttft) / (self.output_tokens - 1)
