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


# ---------------------------------------------------------------------------- malformed files and rows

def _write_bytes(path, data):
    path.write_bytes(data)
    return str(path)


OK1, OK2 = b'{"problem": "a", "answer": "1"}', b'{"problem": "c", "answer": "3"}'


def test_invalid_json_names_the_right_column(tmp_path):
    # 27 characters, then the value is missing: column 28 (the old message said column 1, of the newline)
    p = _write_bytes(tmp_path / "d.jsonl", OK1 + b'\n{"problem": "b", "answer": \n' + OK2 + b"\n")
    with pytest.raises(ValueError, match=r"d\.jsonl:2: invalid JSON \(Expecting value at column 28\)"):
        files.load_problems(p)
    p = _write_bytes(tmp_path / "e.jsonl", b'\n\n{"problem": x}\r\n')   # CRLF; x is character 13
    with pytest.raises(ValueError, match=r"e\.jsonl:3: invalid JSON \(Expecting value at column 13\)"):
        files.load_problems(p)
    # a stray carriage return inside a row does not shift the line numbers of later rows
    p = _write_bytes(tmp_path / "f.jsonl", OK1 + b'\n{"problem": "b",\r "answer": "2"}\n{oops}\n')
    with pytest.raises(ValueError, match=r"f\.jsonl:3: invalid JSON"):
        files.load_problems(p)
    probs, skipped = files.load_problems(p, on_bad_row="skip")
    assert [(x.id, x.answer) for x in probs] == [("f.jsonl/1", "1"), ("f.jsonl/2", "2")] and skipped == 1


def test_binary_and_wrong_encoding_rows(tmp_path):
    p = _write_bytes(tmp_path / "g.jsonl", OK1 + b"\n\x80\x81garbage\xff\x00\n" + OK2 + b"\n")
    with pytest.raises(ValueError, match=r"g\.jsonl:2: binary data \(NUL byte at column 11\)"):
        files.load_problems(p)
    p = _write_bytes(tmp_path / "h.jsonl", OK1 + b"\n\x80\x81garbage\xff\n" + OK2 + b"\n")
    with pytest.raises(ValueError, match=r"h\.jsonl:2: not valid UTF-8 \(byte 0x80 at column 1\)"):
        files.load_problems(p)
    probs, skipped = files.load_problems(p, on_bad_row="skip")
    assert [x.answer for x in probs] == ["1", "3"] and skipped == 1
    latin1 = '{"problem": "café", "answer": "1"}'.encode("latin-1")   # é (0xe9) is character 17
    p = _write_bytes(tmp_path / "l.jsonl", OK1 + b"\n" + latin1 + b"\n")
    with pytest.raises(ValueError, match=r"l\.jsonl:2: not valid UTF-8 \(byte 0xe9 at column 17\)"):
        files.load_problems(p)


def test_bad_files(tmp_path):
    for name, data in [("empty.jsonl", b""), ("blank.jsonl", b"\n  \n\n")]:
        for mode in ("error", "skip"):
            with pytest.raises(ValueError, match=rf"{name}:1: empty file"):
                files.load_problems(_write_bytes(tmp_path / name, data), on_bad_row=mode)
    text = (OK1 + b"\n").decode()
    for name, data, what in [("u16.jsonl", text.encode("utf-16"), "UTF-16"),
                             ("u32.jsonl", text.encode("utf-32"), "UTF-32"),
                             ("gz.jsonl", __import__("gzip").compress(OK1), "gzip")]:
        with pytest.raises(ValueError, match=rf"{name}:1: not a UTF-8 JSONL file: {what}"):
            files.load_problems(_write_bytes(tmp_path / name, data), on_bad_row="skip")
    p = _write_bytes(tmp_path / "allbad.jsonl", b"{\n[1]\n")
    with pytest.raises(ValueError, match=r"allbad\.jsonl:1: no usable rows \(2 bad lines skipped\)"):
        files.load_problems(p, on_bad_row="skip")
    p = _write_bytes(tmp_path / "bad.parquet", b"PAR1 not really")
    with pytest.raises(ValueError, match=r"bad\.parquet:1: not a readable parquet file"):
        files.load_problems(p)


def test_utf8_bom_is_accepted(tmp_path):
    p = _write_bytes(tmp_path / "bom.jsonl", b"\xef\xbb\xbf" + OK1 + b"\n" + b"\xef\xbb\xbf" + OK2 + b"\n")
    probs, skipped = files.load_problems(p)
    assert [(x.id, x.question, x.answer) for x in probs] == [("bom.jsonl/1", "a", "1"), ("bom.jsonl/2", "c", "3")]
    assert skipped == 0
