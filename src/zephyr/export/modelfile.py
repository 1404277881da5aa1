"""An Ollama ``Modelfile`` for an exported GGUF: FROM the file, the chat template in Go template syntax,
its stop tokens and default sampling parameters.

Ollama renders prompts with Go's text/template, not Jinja, so the model's chat template has to be
translated. We do not parse Jinja: we recognise the *format* a template writes by rendering probe
conversations with it and comparing them with the formats we can write (the Zephyr template with the
model's EOS, and ChatML, each optionally with a default system prompt, as SmolLM2's has). A template
that matches none is refused with a clear error; a near-miss translation would make Ollama feed the
model prompts it was never trained on, with nothing to show for it but worse answers.

Ollama's convention for the last message: after a user (or system) turn the template opens the
assistant turn (Jinja's ``add_generation_prompt``); a final assistant turn is left open, so the model
continues it.
"""

from __future__ import annotations

from dataclasses import dataclass

from zephyr.errors import ModelError

ROLES = ("system", "user", "assistant")
# Sampling defaults of the Zephyr model card (zephyr-7b-beta): temperature 0.7, top-k 50, top-p 0.95.
SAMPLING = {"temperature": 0.7, "top_k": 50, "top_p": 0.95}
MAX_DEFAULT_CONTEXT = 4096  # Ollama allocates the KV cache for num_ctx up front; more is opt-in

PROBES = (
    ([("system", "Be brief."), ("user", "Hi there")], True),
    ([("user", "Hi there")], True),
    ([("system", "Be brief."), ("user", "Hi"), ("assistant", "Hello!"), ("user", "How are you?")], True),
    ([("user", "Hi"), ("assistant", "Hello!")], False),
)


@dataclass(frozen=True)
class ChatFormat:
    """A chat format as text around each turn; ``render`` follows the Jinja semantics, ``go_template``
    writes the same text in Ollama's Go template syntax."""

    name: str
    turns: dict[str, tuple[str, str]]  # role -> (text before the content, text after it)
    generation_prompt: str
    stops: tuple[str, ...]
    default_system: str | None = None

    def render(self, messages: list[tuple[str, str]], add_generation_prompt: bool) -> str:
        if self.default_system is not None and (not messages or messages[0][0] != "system"):
            messages = [("system", self.default_system), *messages]
        text = "".join(self.turns[role][0] + content + self.turns[role][1] for role, content in messages)
        return text + (self.generation_prompt if add_generation_prompt else "")

    def go_template(self) -> str:
        head = ""
        if self.default_system is not None:
            before, after = self.turns["system"]
            head = (
                '{{- if not (and .Messages (eq (index .Messages 0).Role "system")) }}'
                f"{before}{self.default_system}{after}{{{{ end }}}}\n"
            )
        branches = []
        for role in ROLES:
            before, after = self.turns[role]
            # A final assistant turn stays open so the model continues it (Ollama's convention).
            close = f"{{{{ if not $last }}}}{after}{{{{ end }}}}" if role == "assistant" else after
            keyword = "if" if not branches else "else if"
            branches.append(f'{{{{ {keyword} eq .Role "{role}" }}}}{before}{{{{ .Content }}}}{close}')
        return (
            head
            + "{{- range $i, $_ := .Messages }}{{ $last := eq (len (slice $.Messages $i)) 1 }}"
            + "".join(branches)
            + "{{ end }}"
            + f'{{{{ if and $last (ne .Role "assistant") }}}}{self.generation_prompt}{{{{ end }}}}'
            + "{{ end }}"
        )


def candidate_formats(eos: str) -> list[ChatFormat]:
    """The formats we can translate, for a tokenizer whose EOS token is ``eos``."""
    zephyr = {role: (f"<|{role}|>\n", f"{eos}\n") for role in ROLES}
    chatml = {role: (f"<|im_start|>{role}\n", "<|im_end|>\n") for role in ROLES}
    return [
        ChatFormat("zephyr", zephyr, "<|assistant|>\n", (eos, "<|user|>", "<|system|>", "<|assistant|>")),
        ChatFormat("chatml", chatml, "<|im_start|>assistant\n", _unique(("<|im_end|>", "<|im_start|>", eos))),
    ]


def detect_format(tokenizer) -> ChatFormat:
    """The translatable format the tokenizer's chat template writes, or a ModelError saying why not."""
    template = getattr(tokenizer, "chat_template", None)
    if not isinstance(template, str) or not template:
        raise ModelError("The tokenizer has no chat template to translate into the Modelfile's TEMPLATE")

    def jinja(messages, add_generation_prompt):
        turns = [{"role": role, "content": content} for role, content in messages]
        return tokenizer.apply_chat_template(
            turns, tokenize=False, add_generation_prompt=add_generation_prompt
        )

    for fmt in candidate_formats(tokenizer.eos_token):
        fmt = _with_default_system(fmt, jinja([("user", "Hi there")], False))
        if fmt is not None and all(jinja(m, gen) == fmt.render(m, gen) for m, gen in PROBES):
            return fmt
    raise ModelError(
        "Cannot translate this chat template into Ollama's Go template syntax: it writes neither the Zephyr "
        "format nor ChatML. Export with `--chat-template zephyr` or `--chat-template chatml`, or skip the "
        f"Modelfile with `--no-modelfile`. Its first lines: {template[:160]!r}"
    )


def _with_default_system(fmt: ChatFormat, rendered_user: str) -> ChatFormat | None:
    """``fmt`` as it renders a lone user turn: plain, with the default system prompt it shows, or None."""
    before, after = fmt.turns["system"]
    user = fmt.render([("user", "Hi there")], False)
    if rendered_user == user:
        return fmt
    if rendered_user.startswith(before) and rendered_user.endswith(after + user):
        system = rendered_user[len(before) : len(rendered_user) - len(after + user)]
        return ChatFormat(fmt.name, fmt.turns, fmt.generation_prompt, fmt.stops, default_system=system)
    return None


def modelfile_text(gguf_name: str, tokenizer, context_length: int) -> str:
    """The Modelfile beside ``gguf_name`` (FROM is relative: Ollama resolves it from the Modelfile's dir)."""
    fmt = detect_format(tokenizer)
    texts = [*(t for turn in fmt.turns.values() for t in turn), fmt.default_system or ""]
    if any(mark in t for t in texts for mark in ("{{", "}}", '"""')):
        raise ModelError(
            'The chat template\'s text contains `{{`, `}}` or `"""`, which a Modelfile TEMPLATE cannot '
            "hold literally; skip the Modelfile with `--no-modelfile`"
        )
    template = fmt.go_template()
    lines = [
        f"# Ollama Modelfile written by `zephyr export` (chat format: {fmt.name}).",
        "# Build with: ollama create MODEL_NAME -f Modelfile (in this directory)",
        f"FROM ./{gguf_name}",
        f'TEMPLATE """{template}"""',
    ]
    lines += [f"PARAMETER stop {_quote(stop)}" for stop in fmt.stops]
    lines += [f"PARAMETER {key} {value}" for key, value in SAMPLING.items()]
    lines.append(f"PARAMETER num_ctx {min(context_length, MAX_DEFAULT_CONTEXT)}")
    return "\n".join(lines) + "\n"


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _unique(items) -> tuple[str, ...]:
    return tuple(dict.fromkeys(i for i in items if i))
