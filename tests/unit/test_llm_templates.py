"""Chats that real chat templates accept: consecutive turns of one role merged, the system prompt
folded into the first user turn where a template has no system role, and a user turn put first
where a template demands one. The templates are written into copies of the tiny model's tokenizer
and run by transformers' own chat-template renderer, through the transformers engine."""

from __future__ import annotations

from pathlib import Path

import pytest
import pytest_asyncio

from services.llm.config import TransformersConfig
from services.llm.engine import ChatRequest, ChatTurn, Finished, Sampling, TemplateTraits, chat_messages

ROOT = Path(__file__).resolve().parents[2]
SMOLLM2 = ROOT / "models" / "cpu" / "smollm2-135m-instruct"

# Strict alternation, user first, no system role: what Gemma's and older Mistral templates enforce.
STRICT = """{%- for message in messages %}
{%- if message.role == 'system' %}{{ raise_exception('System role not supported') }}{%- endif %}
{%- if (message.role == 'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('roles must alternate') }}{%- endif %}
{{- '<turn>' + message.role + '\\n' + message.content + '</turn>\\n' }}
{%- endfor %}
{%- if add_generation_prompt %}{{- '<turn>assistant\\n' }}{%- endif %}"""
# A system message first is fine; the rest must alternate from the user.
SYSTEM_THEN_STRICT = """{%- set chat = messages[1:] if messages and messages[0].role == 'system' else messages %}
{%- if chat is not sameas messages %}{{- '[SYS]' + messages[0].content + '[/SYS]' }}{%- endif %}
{%- for message in chat %}
{%- if (message.role == 'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('roles must alternate') }}{%- endif %}
{{- '[' + message.role + ']' + message.content }}
{%- endfor %}
{%- if add_generation_prompt %}{{- '[assistant]' }}{%- endif %}"""
# Accepts anything but silently drops system messages.
DROPS_SYSTEM = """{%- for message in messages if message.role != 'system' %}
{{- '<' + message.role + '>' + message.content + '\\n' }}
{%- endfor %}
{%- if add_generation_prompt %}{{- '<assistant>' }}{%- endif %}"""

SYSTEM = "You are Parley, a brief voice assistant."
GREETING = "Hello! How can I help?"
CALL = (ChatTurn("system", SYSTEM), ChatTurn("assistant", GREETING), ChatTurn("user", "I would like"),
        ChatTurn("user", "a table for two."))


def request(*turns: ChatTurn, max_tokens: int = 2) -> ChatRequest:
    return ChatRequest(messages=turns, sampling=Sampling(temperature=0.0, max_tokens=max_tokens))


def test_messages_merge_consecutive_roles_but_not_tool_results():
    turns = (ChatTurn("user", "a"), ChatTurn("user", "b"), ChatTurn("assistant", "c"), ChatTurn("tool", "1", "t1"),
             ChatTurn("tool", "2", "t2"))
    assert chat_messages(request(*turns)) == [
        {"role": "user", "content": "a\nb"}, {"role": "assistant", "content": "c"},
        {"role": "tool", "content": "1", "tool_call_id": "t1"}, {"role": "tool", "content": "2", "tool_call_id": "t2"}]


@pytest.mark.parametrize(("traits", "expected"), [
    (TemplateTraits(), [("system", SYSTEM), ("assistant", GREETING), ("user", "I would like\na table for two.")]),
    (TemplateTraits(system=False),
     [("user", SYSTEM), ("assistant", GREETING), ("user", "I would like\na table for two.")]),
    (TemplateTraits(assistant_first=False),
     [("system", SYSTEM), ("user", ""), ("assistant", GREETING), ("user", "I would like\na table for two.")]),
    (TemplateTraits(system=False, assistant_first=False),
     [("user", SYSTEM), ("assistant", GREETING), ("user", "I would like\na table for two.")]),
])
def test_a_calls_chat_for_each_kind_of_template(traits, expected):
    assert [(m["role"], m["content"]) for m in chat_messages(request(*CALL), traits)] == expected


def test_without_a_system_role_the_system_prompt_opens_the_first_user_turn():
    only_system = request(ChatTurn("system", SYSTEM))
    assert chat_messages(only_system, TemplateTraits(system=False)) == [{"role": "user", "content": SYSTEM}]
    user_first = request(ChatTurn("system", SYSTEM), ChatTurn("user", "Hi"), ChatTurn("assistant", "Hey"))
    assert chat_messages(user_first, TemplateTraits(system=False)) == [
        {"role": "user", "content": f"{SYSTEM}\n\nHi"}, {"role": "assistant", "content": "Hey"}]


def model_with_template(tiny_llm: Path, directory: Path, template: str | None) -> Path:
    directory.mkdir()
    for item in tiny_llm.iterdir():
        (directory / item.name).symlink_to(item)
    if template is not None:
        (directory / "chat_template.jinja").unlink()
        (directory / "chat_template.jinja").write_text(template, encoding="utf-8")
    return directory


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def engines(tiny_llm, tmp_path_factory):
    from services.llm.engines.transformers import TransformersEngine

    root = tmp_path_factory.mktemp("templates")
    made = {}
    for name, template in (("chatml", None), ("strict", STRICT), ("system_then_strict", SYSTEM_THEN_STRICT),
                           ("drops_system", DROPS_SYSTEM)):
        made[name] = TransformersEngine(TransformersConfig(
            model=str(model_with_template(tiny_llm, root / name, template)), device="cpu"))
    yield made
    for engine in made.values():
        await engine.close()


def test_traits_are_found_by_rendering(engines):
    assert engines["chatml"].template == TemplateTraits(system=True, assistant_first=True)
    assert engines["strict"].template == TemplateTraits(system=False, assistant_first=False)
    assert engines["system_then_strict"].template == TemplateTraits(system=True, assistant_first=False)
    assert engines["drops_system"].template == TemplateTraits(system=False, assistant_first=True)


@pytest.mark.parametrize("name", ["chatml", "strict", "system_then_strict", "drops_system"])
async def test_every_template_renders_and_generates_a_calls_chat(engines, name):
    engine = engines[name]
    prompt = engine.render_prompt(request(*CALL))
    # Nothing is lost: the system prompt once, the greeting, both caller turns in one user turn.
    assert prompt.count(SYSTEM) == 1 and GREETING in prompt and "I would like\na table for two." in prompt
    assert prompt.index(SYSTEM) < prompt.index(GREETING) < prompt.index("a table for two")
    items = [item async for item in engine.generate(request(*CALL))]
    assert isinstance(items[-1], Finished) and items[-1].completion_tokens == 2


def test_the_strict_template_still_refuses_the_raw_chat(engines):
    from jinja2.exceptions import TemplateError

    raw = [{"role": t.role, "content": t.content} for t in CALL]
    with pytest.raises(TemplateError, match="System role not supported"):
        engines["strict"].tokenizer.apply_chat_template(raw, tokenize=False)


@pytest.mark.skipif(not SMOLLM2.is_dir(), reason="the real CPU set is not in models/cpu (`parley models cpu`)")
def test_smollm2s_real_template():
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(SMOLLM2, local_files_only=True)
    traits = TemplateTraits.probe(lambda m: tokenizer.apply_chat_template(m, add_generation_prompt=True,
                                                                          tokenize=False))
    assert traits == TemplateTraits(system=True, assistant_first=True)
    prompt = tokenizer.apply_chat_template(chat_messages(request(*CALL), traits), add_generation_prompt=True,
                                           tokenize=False)
    assert prompt.startswith(f"<|im_start|>system\n{SYSTEM}<|im_end|>\n")
    assert prompt.endswith("<|im_start|>user\nI would like\na table for two.<|im_end|>\n<|im_start|>assistant\n")
