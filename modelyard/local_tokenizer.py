"""A model's own tokenizer, loaded from its directory (never from a hub): the prompt's token ids as vLLM computes them.

The directory holds `tokenizer.json` (the `tokenizers` library's file, which every Hugging Face fast tokenizer
saves) and `tokenizer_config.json` (its special tokens and `chat_template`; a `chat_template.jinja` beside it wins,
as in transformers). A chat request is rendered as transformers' `apply_chat_template` renders it (jinja2, sandboxed,
`trim_blocks` and `lstrip_blocks`, the special tokens, `add_generation_prompt`, `tools`, `chat_template_kwargs`,
`continue_final_message`; never a template sent with the request), then encoded without special tokens (the
template writes them), as vLLM's chat and /tokenize endpoints do; a completion prompt is encoded with them
(`add_special_tokens`, vLLM's default for completions). Message content given as parts is joined with newlines,
vLLM's "string" content format.

`tokenizers` and `jinja2` are imported when a model asks for its tokenizer, never on import of this module.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from modelyard.spec.schema import YardSpec

SPECIAL_NAMES = ("bos_token", "eos_token", "unk_token", "pad_token", "sep_token", "cls_token", "mask_token")


class TokenizerError(Exception):
    """A tokenizer directory that cannot be used (the message names the file), or a prompt it cannot render."""


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise TokenizerError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise TokenizerError(f"{path}: cannot be read ({exc})") from None
    except json.JSONDecodeError as exc:
        raise TokenizerError(f"{path}: not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})") from None
    if not isinstance(data, dict):
        raise TokenizerError(f"{path}: not a JSON object")
    return data


def _token_text(value: Any) -> str | None:
    """A special token as tokenizer_config.json gives it: a string, or an AddedToken's dict."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        return str(value["content"])
    return None


def _template_of(config: dict[str, Any], directory: Path) -> str | None:
    jinja = directory / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8")
    template = config.get("chat_template")
    if isinstance(template, list):  # named templates: the default one
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("default")
    if template is not None and not isinstance(template, str):
        raise TokenizerError(f"{directory / 'tokenizer_config.json'}: chat_template is not a string")
    return template


def content_text(content: Any) -> Any:
    """vLLM's "string" content format: a list of parts becomes its text parts joined by newlines."""
    if isinstance(content, list):
        return "\n".join(str(p.get("text", "")) for p in content if isinstance(p, dict) and p.get("type") == "text")
    return content


class LocalTokenizer:
    """One model's tokenizer: `chat_ids` and `prompt_ids` give the token ids its engine computes."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory).expanduser()
        if not self.directory.is_dir():
            raise TokenizerError(f"{self.directory}: no such directory (it should hold tokenizer.json)")
        file = self.directory / "tokenizer.json"
        _read_json(file)  # a clear error for a missing or broken file, before the library's own
        config_file = self.directory / "tokenizer_config.json"
        config = _read_json(config_file) if config_file.exists() else {}
        from tokenizers import Tokenizer

        try:
            self.tokenizer = Tokenizer.from_file(str(file))
        except Exception as exc:  # the library's error for a JSON that is not a tokenizer
            raise TokenizerError(f"{file}: not a tokenizer ({exc})") from None
        # transformers sets both per call, off unless asked: the file's own (a sentence model's 512) never apply
        self.tokenizer.no_truncation()
        self.tokenizer.no_padding()
        self.special: dict[str, Any] = {
            name: text for name in SPECIAL_NAMES if (text := _token_text(config.get(name))) is not None}
        extra = config.get("additional_special_tokens")
        if isinstance(extra, list):
            self.special["additional_special_tokens"] = [t for t in map(_token_text, extra) if t is not None]
        self.template_source = _template_of(config, self.directory)
        self._env: Any = None
        self._templates: dict[str, Any] = {}

    def _template(self, source: str) -> Any:
        compiled = self._templates.get(source)
        if compiled is None:
            if self._env is None:
                self._env = _environment()
            try:
                compiled = self._env.from_string(source)
            except Exception as exc:
                raise TokenizerError(f"chat template does not compile: {exc}") from None
            if len(self._templates) < 16:  # the model's own, and a few given by requests
                self._templates[source] = compiled
        return compiled

    def render(self, messages: Sequence[Any], add_generation_prompt: bool = True, tools: Any = None,
               chat_template: str | None = None, template_kwargs: Mapping[str, Any] | None = None,
               continue_final_message: bool = False) -> str:
        source = chat_template or self.template_source
        if source is None:
            raise TokenizerError(f"{self.directory}: the tokenizer has no chat template")
        conversation = [{**m, "content": content_text(m.get("content"))} if isinstance(m, dict) else m
                        for m in messages]
        context = {**self.special, **(template_kwargs or {})}
        try:
            text: str = self._template(source).render(messages=conversation, tools=tools,
                                                      add_generation_prompt=add_generation_prompt, **context)
        except TokenizerError:
            raise
        except Exception as exc:  # raise_exception() in the template, or a template error
            raise TokenizerError(f"chat template: {exc}") from None
        if continue_final_message and conversation:
            text = _continued(text, conversation[-1])
        return text

    def encode(self, text: str, add_special_tokens: bool) -> list[int]:
        ids: list[int] = self.tokenizer.encode(text, add_special_tokens=add_special_tokens).ids
        return ids

    def chat_ids(self, body: Mapping[str, Any]) -> list[int]:
        """A chat request's (or vLLM /tokenize's) token ids: its messages rendered, then encoded. A template sent
        with the request is not rendered (a client's template can burn the gateway's CPU; vLLM too refuses one
        unless started with --trust-request-chat-template)."""
        messages = body.get("messages")
        if not isinstance(messages, list):
            raise TokenizerError("messages must be a list")
        if body.get("chat_template") is not None:
            raise TokenizerError("a chat_template sent with the request is not rendered: the model's own is used")
        continued = bool(body.get("continue_final_message", False))
        kwargs = body.get("chat_template_kwargs")
        text = self.render(messages, bool(body.get("add_generation_prompt", not continued)), body.get("tools"),
                           None, kwargs if isinstance(kwargs, dict) else None, continued)
        return self.encode(text, bool(body.get("add_special_tokens", False)))

    def prompt_ids(self, body: Mapping[str, Any]) -> list[int]:
        prompt = body.get("prompt")
        if not isinstance(prompt, str):
            raise TokenizerError("prompt must be a string")
        return self.encode(prompt, bool(body.get("add_special_tokens", True)))

    def ids(self, body: Mapping[str, Any]) -> list[int]:
        """The token ids of a vLLM /tokenize body (chat messages or a completion prompt)."""
        return self.chat_ids(body) if "messages" in body else self.prompt_ids(body)


def load_tokenizers(spec: YardSpec) -> dict[str, LocalTokenizer]:
    """The tokenizers of the models that ask for theirs in the gateway (`tokenizer: local`), by model; a missing or
    broken file is a TokenizerError naming it."""
    from modelyard.engines import get_engine

    loaded = {}
    for model in spec.models:
        directory = get_engine(model.engine).tokenizer_dir(model)
        if directory is not None:
            try:
                loaded[model.name] = LocalTokenizer(directory)
            except TokenizerError as exc:
                raise TokenizerError(f"model {model.name!r}: tokenizer: {exc}") from None
    return loaded


def _continued(text: str, final: Any) -> str:
    """transformers' `continue_final_message`: the rendering cut right after the final message's content."""
    content = final.get("content") if isinstance(final, dict) else None
    if not isinstance(content, str) or not content.strip() or content.strip() not in text:
        raise TokenizerError("continue_final_message: the final message's content is not in the rendered chat")
    at = text.rindex(content.strip())
    return text[:at + len(content)] if text[at:at + len(content)] == content else text[:at + len(content.strip())]


def _environment() -> Any:
    """transformers' template environment: sandboxed, trim_blocks and lstrip_blocks, loop controls, its globals."""
    import jinja2
    import jinja2.ext
    import jinja2.nodes
    import jinja2.sandbox

    def raise_exception(message: str) -> None:
        raise TokenizerError(message)

    def tojson(value: Any, ensure_ascii: bool = False, indent: int | None = None, separators: Any = None,
               sort_keys: bool = False) -> str:
        return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    def strftime_now(fmt: str) -> str:
        return datetime.now().strftime(fmt)

    class Generation(jinja2.ext.Extension):
        """transformers' `{% generation %}...{% endgeneration %}` (it marks the assistant's tokens): the body as is."""

        tags = {"generation"}

        def parse(self, parser: Any) -> Any:
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return jinja2.nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

        def _body(self, caller: Any) -> Any:
            return caller()

    env = jinja2.sandbox.ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                                       extensions=[jinja2.ext.loopcontrols, Generation])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = strftime_now
    return env
