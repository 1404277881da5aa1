"""The Ollama Modelfile beside an exported GGUF: its TEMPLATE renders what the model's Jinja chat template
renders (checked with Go's own text/template when `go` is installed), its stop tokens are the template's,
and a template we cannot translate is refused clearly."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest

from zephyr.errors import ModelError

LLAMA2_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + "
    "message['content'] + ' [/INST]' }}{% else %}{{ ' ' + message['content'] + eos_token }}{% endif %}{% endfor %}"
)
CONVERSATIONS = [
    [("user", "Hi there")],
    [("system", "Be brief."), ("user", "Hi there")],
    [("system", "You answer in French."), ("user", "Hello"), ("assistant", "Bonjour !"), ("user", "Thanks")],
    [("user", "Write a line"), ("assistant", "Roses are")],  # a final assistant turn is continued
]

# Ollama renders TEMPLATE with Go's text/template and `.Messages` of {Role, Content}; so does this.
GO_RENDER = """package main

import (
	"encoding/json"
	"os"
	"strings"
	"text/template"
)

type Message struct{ Role, Content string }
type Case struct {
	Template string
	Messages []Message
}

func main() {
	var cases []Case
	if err := json.NewDecoder(os.Stdin).Decode(&cases); err != nil {
		panic(err)
	}
	var out []string
	for _, c := range cases {
		var b strings.Builder
		t := template.Must(template.New("m").Parse(c.Template))
		if err := t.Execute(&b, map[string]any{"Messages": c.Messages}); err != nil {
			panic(err)
		}
		out = append(out, b.String())
	}
	json.NewEncoder(os.Stdout).Encode(out)
}
"""


def go_render(tmp_path, template: str, conversations) -> list[str]:
    program = tmp_path / "render.go"
    program.write_text(GO_RENDER)
    cases = [
        {"Template": template, "Messages": [{"Role": r, "Content": c} for r, c in m]} for m in conversations
    ]
    env = {
        "GOCACHE": str(tmp_path / "gocache"),
        "HOME": str(tmp_path),
        "PATH": "/usr/bin:/bin:/usr/local/bin",
    }
    done = subprocess.run(
        ["go", "run", str(program)],
        input=json.dumps(cases),
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def expected_ollama_prompt(tokenizer, fmt, messages) -> str:
    """What the Jinja template gives Ollama's way: the assistant turn opened after a user turn, a final
    assistant turn left open (without its closing text) for the model to continue."""
    turns = [{"role": r, "content": c} for r, c in messages]
    if messages[-1][0] != "assistant":
        return tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=True)
    full = tokenizer.apply_chat_template(turns, tokenize=False)
    closing = fmt.turns["assistant"][1]
    assert full.endswith(closing)
    return full[: -len(closing)]


@pytest.mark.parametrize(
    ("template", "name", "stops"),
    [
        ("zephyr", "zephyr", ["<|im_end|>", "<|user|>", "<|system|>", "<|assistant|>"]),
        ("chatml", "chatml", ["<|im_end|>", "<|im_start|>"]),
        (None, "chatml", ["<|im_end|>", "<|im_start|>"]),  # SmolLM2's own: ChatML with a default system
    ],
)
def test_modelfile_for_each_translatable_template(tokenizer_dir, tmp_path, template, name, stops):
    from zephyr.export.modelfile import detect_format, modelfile_text
    from zephyr.models import load_tokenizer

    tokenizer = load_tokenizer(str(tokenizer_dir), chat_template=template)
    fmt = detect_format(tokenizer)
    assert fmt.name == name
    text = modelfile_text("model-q8_0.gguf", tokenizer, context_length=8192)
    lines = text.splitlines()
    assert "FROM ./model-q8_0.gguf" in lines
    assert [line.split(" ", 2)[2] for line in lines if line.startswith("PARAMETER stop ")] == [
        json.dumps(s) for s in stops
    ]
    for setting in ("temperature 0.7", "top_k 50", "top_p 0.95", "num_ctx 4096"):
        assert f"PARAMETER {setting}" in lines
    assert f'TEMPLATE """{fmt.go_template()}"""' in text
    if template is None:
        assert fmt.default_system == "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
    else:
        assert fmt.default_system is None
    for messages in CONVERSATIONS:  # the format renders what the Jinja template does
        turns = [{"role": r, "content": c} for r, c in messages]
        jinja = tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=True)
        assert fmt.render(messages, True) == jinja


@pytest.mark.skipif(shutil.which("go") is None, reason="needs Go (Debian's golang-go) to run text/template")
@pytest.mark.parametrize("template", ["zephyr", "chatml", None])
def test_go_template_renders_what_the_jinja_template_does(tokenizer_dir, tmp_path, template):
    from zephyr.export.modelfile import detect_format
    from zephyr.models import load_tokenizer

    tokenizer = load_tokenizer(str(tokenizer_dir), chat_template=template)
    fmt = detect_format(tokenizer)
    rendered = go_render(tmp_path, fmt.go_template(), CONVERSATIONS)
    for messages, got in zip(CONVERSATIONS, rendered, strict=True):
        assert got == expected_ollama_prompt(tokenizer, fmt, messages), messages


def test_untranslatable_template_is_refused_before_writing(tiny_model_dir, tmp_path):
    from zephyr.export import export_gguf
    from zephyr.export.modelfile import detect_format
    from zephyr.models import load_tokenizer

    tokenizer = load_tokenizer(str(tiny_model_dir), chat_template=LLAMA2_TEMPLATE)
    with pytest.raises(ModelError, match="Cannot translate this chat template") as info:
        detect_format(tokenizer)
    assert "--no-modelfile" in str(info.value) and "--chat-template zephyr" in str(info.value)
    with pytest.raises(ModelError, match="Cannot translate"):
        export_gguf(str(tiny_model_dir), tmp_path / "gguf", chat_template=LLAMA2_TEMPLATE)
    assert not (tmp_path / "gguf").exists()

    result = export_gguf(
        str(tiny_model_dir), tmp_path / "gguf", chat_template=LLAMA2_TEMPLATE, modelfile=False
    )
    assert result.modelfile is None
    assert sorted(p.name for p in result.output.iterdir()) == ["README.md", "model-f16.gguf"]
    assert "ollama" not in (result.output / "README.md").read_text()
