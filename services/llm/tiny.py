"""The tiny random-weight chat model: a 2-layer Llama with a locally trained byte-level BPE.

Built offline in a couple of seconds. It goes through exactly the loading path of a real
checkpoint (config.json + model.safetensors + tokenizer.json + chat template +
generation_config.json), so `AutoTokenizer` / `AutoModelForCausalLM` / vLLM load it unchanged.
Its replies are gibberish: it exists to exercise the serving system, not to chat.

Special tokens get all-zero rows in the (untied) output projection, so their logit is exactly 0
while the best random token is always above 0: greedy decoding never ends early by chance and
always runs to max_tokens, which keeps tests deterministic. Sampling can still pick them.
"""

from __future__ import annotations

import json
from pathlib import Path

SEED = 1234
VOCAB_SIZE = 1536
MAX_POSITIONS = 2048

PAD, BOS, EOS = "<pad>", "<s>", "</s>"
IM_START, IM_END = "<|im_start|>", "<|im_end|>"
SPECIAL_TOKENS = [PAD, BOS, EOS, IM_START, IM_END]
# Plain added tokens (kept whole by the tokenizer, printed in decoded text) for tool calling.
TOOL_TOKENS = ["<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>"]

# ChatML, with a Qwen-like tools block. Roles: system, user, assistant, tool. Assistant turns may
# carry OpenAI-style `tool_calls`; tool turns may carry `tool_call_id`.
CHAT_TEMPLATE = """\
{%- if tools %}
{{- '<|im_start|>system\\n' }}
{%- if messages and messages[0].role == 'system' %}{{- messages[0].content + '\\n\\n' }}{%- endif %}
{{- '# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n'
    'Function signatures are given within <tools></tools> XML tags:\\n<tools>' }}
{%- for tool in tools %}{{- '\\n' + (tool | tojson) }}{%- endfor %}
{{- '\\n</tools>\\n\\nFor each function call, return a JSON object with the function name and '
    'arguments within <tool_call></tool_call> XML tags:\\n<tool_call>\\n'
    '{"name": <function-name>, "arguments": <args-json-object>}\\n</tool_call><|im_end|>\\n' }}
{%- elif messages and messages[0].role == 'system' %}
{{- '<|im_start|>system\\n' + messages[0].content + '<|im_end|>\\n' }}
{%- endif %}
{%- for message in messages %}
{%- if message.role == 'system' %}
{%- if not loop.first %}{{- '<|im_start|>system\\n' + message.content + '<|im_end|>\\n' }}{%- endif %}
{%- elif message.role == 'user' %}
{{- '<|im_start|>user\\n' + message.content + '<|im_end|>\\n' }}
{%- elif message.role == 'assistant' %}
{{- '<|im_start|>assistant\\n' + (message.content or '') }}
{%- for call in message.tool_calls or [] %}
{%- set fn = call.function if call.function is defined else call %}
{{- '\\n<tool_call>\\n{"name": "' + fn.name + '", "arguments": ' }}
{%- if fn.arguments is string %}{{- fn.arguments }}{%- else %}{{- fn.arguments | tojson }}{%- endif %}
{{- '}\\n</tool_call>' }}
{%- endfor %}
{{- '<|im_end|>\\n' }}
{%- elif message.role == 'tool' %}
{{- '<|im_start|>tool\\n' }}
{%- if message.tool_call_id %}{{- '[' + message.tool_call_id + ']\\n' }}{%- endif %}
{{- '<tool_response>\\n' + message.content + '\\n</tool_response><|im_end|>\\n' }}
{%- else %}
{{- raise_exception('unknown role: ' + message.role) }}
{%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}
"""

# A small English text written for this purpose: enough for about 1500 BPE merges.
_CORPUS = """\
Hello, how are you today? I am fine, thank you. What can I do for you this morning?
Please tell me the weather in Paris, London, Berlin, Tokyo and New York for tomorrow.
It will be sunny and warm in the afternoon, with a light wind from the west and some clouds.
The voice agent listens to the caller, understands the question, and answers in a short sentence.
When the user interrupts, the assistant stops speaking at once and listens again.
Could you book a table for two people at seven o'clock in the evening, near the river?
Sure, I have booked a table for two at seven. Would you like me to send a reminder?
The meeting was moved to Thursday afternoon because the manager is travelling on Wednesday.
Remember to buy bread, milk, eggs, apples, cheese, rice, coffee and a bottle of olive oil.
The train to the airport leaves every twenty minutes from the central station on platform four.
My phone number is five five five, one two three four. My email address is on the card.
She opened the window, looked at the garden and smiled at the birds singing in the old tree.
We measured the latency of the first token and the time between tokens under heavy load.
The quick brown fox jumps over the lazy dog while the small cat sleeps near the warm fire.
A good answer is clear, polite and brief. A bad answer is long, confusing and slow to arrive.
Set an alarm for six thirty, and turn off the lights in the kitchen and the living room.
How many minutes does it take to walk from the hotel to the museum? About fifteen minutes.
Translate this sentence into French, Spanish and German, then read it back to me slowly.
The children played football in the park until the sun went down behind the hills.
Thank you for calling. Your order number is four eight two. It will arrive on Monday.
I would like to change my appointment with the doctor from Friday morning to next Tuesday.
Numbers: zero one two three four five six seven eight nine ten eleven twelve hundred thousand.
Days: Monday Tuesday Wednesday Thursday Friday Saturday Sunday. Months: January February March
April May June July August September October November December. Seasons: spring summer autumn.
What is the capital of Italy? Rome is the capital of Italy, and Madrid is the capital of Spain.
The server streams each word as soon as it is ready, so the speech can start without waiting.
If the network is slow, the client buffers a little audio and plays it back smoothly.
He asked whether the store was open on holidays, and the clerk said it closes early at noon.
Water boils at one hundred degrees, and ice melts when the temperature rises above zero.
Let me check that for you. One moment please. I found three results that match your search.
The library has many books about history, science, music, art, cooking and computers.
Call the function get_weather with the city name and the unit, then report the result.
{"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}} returned 21 degrees.
I'm sorry, I didn't catch that. Could you repeat the last part of your question, please?
Good night, sleep well, and see you tomorrow. Goodbye! Have a nice day, and take care.
"""


def _train_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        min_frequency=1,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    # Lines, the whole text and a lower-cased copy: more distinct pairs, so more merges.
    lines = _CORPUS.splitlines()
    tokenizer.train_from_iterator([*lines, _CORPUS, _CORPUS.lower()], trainer=trainer)
    return tokenizer


def build(out_dir: Path) -> None:
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    fast = PreTrainedTokenizerFast(
        tokenizer_object=_train_tokenizer(),
        bos_token=BOS,
        eos_token=IM_END,  # a chat model's turn ends with <|im_end|>
        pad_token=PAD,
        additional_special_tokens=[EOS, IM_START],
        model_max_length=MAX_POSITIONS,
        clean_up_tokenization_spaces=False,
    )
    fast.add_tokens(TOOL_TOKENS)
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(out_dir)

    ids = {tok: fast.convert_tokens_to_ids(tok) for tok in SPECIAL_TOKENS}
    vocab = len(fast)

    torch.manual_seed(SEED)
    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=64,
        intermediate_size=176,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=64,  # decoupled from hidden/heads: 64 is a head size every vLLM attention backend supports
        max_position_embeddings=MAX_POSITIONS,
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
        tie_word_embeddings=False,
        bos_token_id=ids[BOS],
        eos_token_id=ids[IM_END],
        pad_token_id=ids[PAD],
        initializer_range=0.5,  # large random weights: peaky, varied logits instead of near-uniform
    )
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():
        model.lm_head.weight[list(ids.values())] = 0.0
    model.generation_config = GenerationConfig(
        bos_token_id=ids[BOS],
        eos_token_id=ids[IM_END],
        pad_token_id=ids[PAD],
        do_sample=False,
    )
    model.save_pretrained(out_dir, safe_serialization=True)
    (out_dir / "parley_tiny.json").write_text(
        json.dumps({"kind": "llm", "seed": SEED, "vocab_size": vocab, "special_ids": ids}, indent=2) + "\n"
    )


if __name__ == "__main__":
    import sys
    import time

    started = time.perf_counter()
    build(Path(sys.argv[1] if len(sys.argv) > 1 else "models/tiny/llm"))
    print(f"built in {time.perf_counter() - started:.1f}s")
