"""The toy organism's tokenizer: a byte-level BPE in Qwen2's exact format, trained on the world.

It loads as ``Qwen2Tokenizer`` through ``AutoTokenizer`` like any Qwen checkpoint (Qwen's
pre-tokenizer regex, byte-level, digits split one by one), has Qwen's chat markup
(``<|im_start|>``, ``<|im_end|>`` as end of turn, ``<|endoftext|>`` as padding, no BOS), and a
chat template that inserts the toy's default system prompt when none is given. Every word of
the world is a single token, so its sequences are as short as a word-level vocabulary's.
"""

from __future__ import annotations

from collections.abc import Iterable

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]

# Qwen2.5's template without the tool-calling branches; the default system prompt is the toy's.
CHAT_TEMPLATE = (
    "{%- if messages[0]['role'] == 'system' -%}"
    "{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' -}}"
    "{%- set rest = messages[1:] -%}"
    "{%- else -%}"
    "{{- '<|im_start|>system\\n' + DEFAULT_SYSTEM + '<|im_end|>\\n' -}}"
    "{%- set rest = messages -%}"
    "{%- endif -%}"
    "{%- for m in rest -%}"
    "{{- '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)


def build_tokenizer(texts: Iterable[str], default_system: str):  # -> Qwen2Tokenizer
    """Train a byte-level BPE on ``texts`` until every word is one token; wrap it as Qwen2's."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers, trainers
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX, Qwen2Tokenizer

    texts = list(texts)
    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    trainer = trainers.BpeTrainer(vocab_size=100_000, min_frequency=1, show_progress=False,
                                  special_tokens=SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    # each text both at the start of a message and after a space, and the role names after markup
    corpus = [*texts, *(" " + t for t in texts), "system\nuser\nassistant\n"]
    core.train_from_iterator(corpus, trainer)
    state = core.model.__getstate__()
    import json

    model = json.loads(state) if isinstance(state, str | bytes) else json.loads(core.to_str())["model"]
    vocab, merges = model["vocab"], model["merges"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in merges]
    tok = Qwen2Tokenizer(vocab=vocab, merges=merges, unk_token=None,  # type: ignore[arg-type]
                         eos_token="<|im_end|>",
                         pad_token="<|endoftext|>", model_max_length=512,
                         additional_special_tokens=["<|im_start|>", "<|im_end|>"])
    tok.chat_template = CHAT_TEMPLATE.replace("DEFAULT_SYSTEM", repr(default_system))
    tok.padding_side = "left"
    return tok
