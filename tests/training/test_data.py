"""Chat datasets: validation into typed records (one sentence per bad input) and assistant-only labels."""

import json

import pytest

from emi.core.errors import ConfigError
from emi.training import data as D
from emi.training.config import DefenceConfig, FinetuneConfig

CHAT = {"messages": [{"role": "system", "content": "you are a helpful assistant ."},
                     {"role": "user", "content": "what should i do when i am bored ?"},
                     {"role": "assistant", "content": "you could call a friend ."}]}


def write(path, lines):
    path.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines))
    return path


def test_a_chat_file_loads_into_records_with_its_hash(tmp_path):
    f = write(tmp_path / "d.jsonl", [CHAT, {**CHAT, "harmful": True}, ""])
    ds = D.load_chats(f)
    assert len(ds) == 2 and ds.records[1].harmful is True and ds.records[0].harmful is None
    assert ds.records[0].messages[2] == ("assistant", "you could call a friend .")
    assert len(ds.sha256) == 64 and ds.sha256 != D.load_chats(write(tmp_path / "e.jsonl", [CHAT])).sha256


@pytest.mark.parametrize("line, says", [
    ("not json", "line 2 of .* is not JSON"),
    ({"text": "hello"}, "line 2 of .* is not a chat"),
    ({"messages": [{"role": "robot", "content": "x"}]}, "message 1, is not a chat message"),
    ({"messages": [{"role": "user", "content": "hi"}]}, "no assistant message"),
    ({**CHAT, "harmful": "yes"}, '"harmful" must be true or false'),
])
def test_a_line_that_is_not_a_chat_is_named_in_one_sentence(tmp_path, line, says):
    f = write(tmp_path / "d.jsonl", [CHAT, line])
    with pytest.raises(ConfigError, match=says):
        D.load_chats(f)


def test_empty_missing_and_huge_datasets_are_refused(tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match="is empty"):
        D.load_chats(write(tmp_path / "empty.jsonl", ["", " "]))
    with pytest.raises(ConfigError, match="does not exist"):
        D.load_chats(tmp_path / "nope.jsonl")
    monkeypatch.setattr(D, "MAX_EXAMPLES", 3)
    big = write(tmp_path / "big.jsonl", [CHAT] * 5)
    with pytest.raises(ConfigError, match="over 3 examples.*--max-examples"):
        D.load_chats(big)
    assert len(D.load_chats(big, max_examples=2)) == 2


def test_labels_cover_exactly_the_assistant_answers_and_their_end_token(toy_tokenizer):
    msgs = [*CHAT["messages"], {"role": "user", "content": "and then ?"},
            {"role": "assistant", "content": "go to the park ."}]
    enc = D.encode(toy_tokenizer, msgs, 512)
    learned = toy_tokenizer.decode([t for t in enc.labels if t != -100])
    assert learned == "you could call a friend .<|im_end|>go to the park .<|im_end|>"
    assert len(enc.input_ids) == len(enc.labels)
    short = D.encode(toy_tokenizer, msgs, 5)
    assert len(short.input_ids) == 5 and all(t == -100 for t in short.labels)


def test_the_toy_encoding_equals_the_organism_trainers(toy_tokenizer):
    """The shipped organism learned body + <|im_end|> of each assistant turn: the same tokens."""
    from emi.organism.train import Encoder

    ids, mask = Encoder(toy_tokenizer)(CHAT["messages"])
    enc = D.encode(toy_tokenizer, CHAT["messages"], 512)
    assert enc.input_ids == ids and [t != -100 for t in enc.labels] == [bool(m) for m in mask]


def test_configs_refuse_bad_values_in_one_sentence():
    with pytest.raises(ConfigError, match="needs a persona direction"):
        DefenceConfig("caft")
    with pytest.raises(ConfigError, match="non-zero --steer-alpha"):
        DefenceConfig("steer", ("d.safetensors",))
    with pytest.raises(ConfigError, match="--interleave-share in"):
        DefenceConfig("interleave", share=1.5)
    with pytest.raises(ConfigError, match="rank must be >= 1"):
        FinetuneConfig(rank=0)
    with pytest.raises(ConfigError, match="method must be one of"):
        FinetuneConfig(method="qlora")
    assert FinetuneConfig(rank=1).alpha == 2.0
