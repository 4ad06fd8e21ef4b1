"""Datasets, prompts, the checkpointable iterator and the solutions store."""
import json

import numpy as np
import pytest

from rl.data import DEFAULT_SUFFIX, Problem, PromptIterator, build_prompt, files, solutions


def _problems(n):
    return [Problem(str(i), f"q{i}", str(i)) for i in range(n)]


def test_iterator_epochs_are_seeded_permutations():
    probs = _problems(10)
    it = PromptIterator(probs, batch_size=4, seed=3)
    seen = [p.id for _ in range(5) for p in next(it)]  # 20 items = 2 epochs
    for e in range(2):
        want = [str(i) for i in np.random.default_rng([3, e]).permutation(10)]
        assert seen[10 * e:10 * (e + 1)] == want
    assert it.state() == {"seed": 3, "n": 10, "batch_size": 4, "epoch": 1, "index": 10}
    json.dumps(it.state())


def test_iterator_resume_gives_same_sequence():
    probs = _problems(7)
    a = PromptIterator(probs, batch_size=3, seed=0)
    for _ in range(4):
        next(a)
    state = json.loads(json.dumps(a.state()))
    rest_a = [[p.id for p in next(a)] for _ in range(6)]
    b = PromptIterator(probs, batch_size=3, seed=0).restore(state)
    assert [[p.id for p in next(b)] for _ in range(6)] == rest_a
    with pytest.raises(ValueError, match="n=7, seed=0"):
        PromptIterator(_problems(8), 3, 0).restore(state)


@pytest.fixture(scope="module")
def tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    words = ["<s>", "<unk>", "<|user|>", "<|system|>", "<|assistant|>", "What", "is", "1+1?", "Please", "reason",
             "step", "by", "step,", "and", "put", "your", "final", "answer", "within", "\\boxed{}.", "Be", "brief."]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    template = ("{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'] }} {% endfor %}"
                "{% if add_generation_prompt %}<|assistant|>{% endif %}")
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", chat_template=template)


def test_build_prompt_chat_template(tokenizer):
    ids = build_prompt(tokenizer, "What is 1+1?")
    want = "<|user|> What is 1+1?\n\n" + DEFAULT_SUFFIX + " <|assistant|>"
    assert ids == tokenizer(want, add_special_tokens=False)["input_ids"]
    assert tokenizer.convert_ids_to_tokens(ids)[0] == "<|user|>" and "<unk>" not in tokenizer.convert_ids_to_tokens(ids)
    ids = build_prompt(tokenizer, "What is 1+1?", system="Be brief.", suffix=None)
    assert tokenizer.convert_ids_to_tokens(ids) == ["<|system|>", "Be", "brief.", "<|user|>", "What", "is", "1+1?",
                                                    "<|assistant|>"]
    ids = build_prompt(tokenizer, "What is 1+1?", template="Be brief. {question}", use_chat_template=False)
    assert tokenizer.convert_ids_to_tokens(ids) == ["Be", "brief.", "What", "is", "1+1?"]
    with pytest.raises(ValueError, match="question"):
        build_prompt(tokenizer, "x", template="no placeholder")


def _write(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return str(path)


def test_jsonl_malformed_line_names_file_and_line(tmp_path):
    p = _write(tmp_path / "d.jsonl", [{"problem": "a", "answer": "1"}, "", '{"problem": "b", "answer": ', 
                                      {"problem": "c", "answer": "3"}])
    with pytest.raises(ValueError, match=r"d\.jsonl:3: invalid JSON"):
        files.load_problems(p)
    probs, skipped = files.load_problems(p, on_bad_row="skip")
    assert [x.answer for x in probs] == ["1", "3"] and skipped == 1
    p2 = _write(tmp_path / "e.jsonl", [{"problem": "a", "answer": "1"}, {"problem": "b"}])
    with pytest.raises(ValueError, match=r"e\.jsonl:2: missing field 'answer'"):
        files.load_problems(p2)
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        files.load_problems(str(tmp_path / "nope.jsonl"))


def test_presets_math_gsm8k_deepscaler(tmp_path):
    m = _write(tmp_path / "math.jsonl", [{"problem": "p", "solution": "so $\\boxed{\\frac{1}{2}}$", "level": 1}])
    probs, _ = files.load_problems(m, **files.PRESETS["math"])
    assert probs[0] == Problem("math.jsonl/1", "p", "\\frac{1}{2}", "so $\\boxed{\\frac{1}{2}}$")
    g = _write(tmp_path / "gsm.jsonl", [{"question": "q", "answer": "3 + 4 = 7\n#### 7"}])
    probs, _ = files.load_problems(g, **files.PRESETS["gsm8k"])
    assert (probs[0].answer, probs[0].solution) == ("7", "3 + 4 = 7\n#### 7")
    d = _write(tmp_path / "ds.jsonl", [{"problem": "q", "answer": "2", "solution": "s"}])
    probs, _ = files.load_problems(d, **files.PRESETS["deepscaler"])
    assert (probs[0].answer, probs[0].solution) == ("2", "s")
    bad = _write(tmp_path / "m2.jsonl", [{"problem": "p", "solution": "no box"}])
    with pytest.raises(ValueError, match=r"m2\.jsonl:1: no answer found"):
        files.load_problems(bad, **files.PRESETS["math"])


def test_parquet(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq
    path = str(tmp_path / "d.parquet")
    pq.write_table(pa.table({"question": ["a", "b"], "gold": ["1", None]}), path)
    with pytest.raises(ValueError, match=r"d\.parquet:2: empty field 'gold'"):
        files.load_problems(path, question_key="question", answer_key="gold")
    probs, skipped = files.load_problems(path, question_key="question", answer_key="gold", on_bad_row="skip")
    assert [(p.question, p.answer) for p in probs] == [("a", "1")] and skipped == 1


def test_solution_store(tmp_path):
    p = _write(tmp_path / "s.jsonl", [{"id": "a", "solution": "x"}, {"id": "a", "solution": "y"},
                                      {"id": "b", "solution": "z"}])
    store = solutions.SolutionStore.load(p)
    assert store.get("a") == ["x", "y"] and store.get("b") == ["z"] and store.get("c") == []
    assert "a" in store and "c" not in store and len(store) == 3
    store.save(str(tmp_path / "t.jsonl"))
    assert solutions.SolutionStore.load(str(tmp_path / "t.jsonl")).get("a") == ["x", "y"]
    bad = _write(tmp_path / "bad.jsonl", [{"id": "a", "solution": "x"}, {"id": "a"}])
    with pytest.raises(ValueError, match=r"bad\.jsonl:2"):
        solutions.SolutionStore.load(bad)
    st = solutions.SolutionStore.from_problems([Problem("p", "q", "1", "sol"), Problem("r", "q", "1")])
    assert st.get("p") == ["sol"] and st.get("r") == []
