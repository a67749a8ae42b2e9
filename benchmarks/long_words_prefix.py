"""The shared-prefix workload of `modelyard bench --dataset shared-prefix`, with every English word replaced by a
Russian one (deterministically, by the word): the same groups, conversations and turns, the same token counts in
a one-token-per-word tokenizer (the simulator's), about twice the characters per token. For routing_compare.sh's
WORKLOAD_ARGS (`--dataset jsonl --dataset-path FILE`), to see what the approximate prefix index's fixed
characters-per-token ratio costs (issue 17).

    .venv/bin/python benchmarks/long_words_prefix.py OUT.jsonl --prefix-groups 11 --prefix-len 800 ...
"""
from __future__ import annotations

import argparse
import zlib
from pathlib import Path

import orjson

from modelyard.bench.datasets import SharedPrefixSpec, shared_prefix

RUSSIAN = (
    "пожалуйста здравствуйте информация государство возможность правительство отношение деятельность "
    "организация количество результат положение необходимость собственный различный существующий "
    "экономический политический общественный значительный исследование производство предприятие образование "
    "управление требование отношения направление обстоятельство представитель участник руководитель "
    "содержание внимание сообщение решение развитие ответственность безопасность поддержка заказчик доставка"
).split()


def russian(text: str) -> str:
    return " ".join(RUSSIAN[zlib.crc32(w.encode()) % len(RUSSIAN)] if w.isalpha() else w for w in text.split(" "))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out", type=Path)
    parser.add_argument("--prefix-groups", type=int, default=11)
    parser.add_argument("--prefix-len", type=int, default=800)
    parser.add_argument("--prefix-conversations", type=int, default=6)
    parser.add_argument("--prefix-turns", type=int, default=3)
    parser.add_argument("--input-len", type=int, default=32)
    parser.add_argument("--output-len", type=int, default=32)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    spec = SharedPrefixSpec(groups=args.prefix_groups, system_tokens=args.prefix_len,
                            conversations_per_group=args.prefix_conversations, turns=args.prefix_turns,
                            question_tokens=args.input_len, output_len=args.output_len)
    with args.out.open("wb") as out:
        for prompt in shared_prefix(spec, seed=args.seed):
            messages = [{"role": m["role"], "content": russian(str(m["content"]))} for m in prompt.messages]
            line = {"messages": messages, "max_tokens": args.output_len, "group": prompt.group}
            out.write(orjson.dumps(line) + b"\n")


if __name__ == "__main__":
    main()
