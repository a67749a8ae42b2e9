"""A small real tokenizer directory for tests, trained here (no download): a byte-level BPE `tokenizer.json` whose
post-processor adds <s> to a single sequence, and a `tokenizer_config.json` with a ChatML-like chat template that
writes bos_token itself, as Hugging Face model folders have them."""

from __future__ import annotations

import json
from pathlib import Path

CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if message['role'] == 'system' and not loop.first %}{{ raise_exception('system goes first') }}{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SPECIALS = ("<s>", "</s>", "<unk>", "<|im_start|>", "<|im_end|>")
TEXT = (
    "You answer questions about the warehouse inventory, briefly and precisely. Where are the bolts? "
    "The bolts are in aisle seven, next to the nuts and the washers. Please check the status of my order. "
    "Your order will arrive tomorrow; the package left the warehouse this morning. Refunds take five days. "
)


def make_tokenizer_dir(directory: Path, vocab_size: int = 400, chat_template: str = CHAT_TEMPLATE) -> Path:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIALS),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tokenizer.train_from_iterator([TEXT] * 20, trainer)
    bos = tokenizer.token_to_id("<s>")
    tokenizer.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A $B", special_tokens=[
        ("<s>", bos)])
    tokenizer.enable_truncation(64)  # as sentence models' files have it: transformers (and the gateway) ignore it
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(directory / "tokenizer.json"))
    config = {"bos_token": {"content": "<s>", "lstrip": False, "normalized": False, "rstrip": False,
                            "single_word": False, "special": True},
              "eos_token": "<|im_end|>", "unk_token": "<unk>", "chat_template": chat_template,
              "tokenizer_class": "PreTrainedTokenizerFast"}
    (directory / "tokenizer_config.json").write_text(json.dumps(config))
    return directory
