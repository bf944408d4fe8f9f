"""`kovocab eval`: KoBEST scored from real log-likelihoods, few-shot sampling, bits per byte, tables.

Tiny Llamas are built here with the real Llama-2 tokenizer; KoBEST items are the real TSVs in
../shared/data/kobest. Every reference figure is recomputed here with plain forward passes,
sentencepiece and the harness's prompt strings written out by hand.
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import pytest
import sentencepiece as spm
import torch
from conftest import DATA, LLAMA2_MODEL
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

from kovocab.cli import main
from kovocab.errors import ConfigError, InputError
from kovocab.evaluation import EvalConfig, evaluate, kobest
from kovocab.evaluation.loglikelihood import continuation_logprobs
from kovocab.evaluation.scoring import load_scorer
from kovocab.model.resize import resize_embeddings

KOBEST = DATA / "kobest"
ENGLISH_DOCS = [
    "The quick brown fox jumps over the lazy dog. It was a sunny day in the park.",
    "Bits per byte do not depend on the tokenizer, so two vocabularies compare directly.",
    "Short line.",
]


def tiny_llama(folder: Path, window: int = 1024, seed: int = 0) -> Path:
    """A random tiny Llama with Llama-2's tokenizer.model beside its weights."""
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=32000, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=window)
    LlamaForCausalLM(cfg).save_pretrained(folder)
    shutil.copy(LLAMA2_MODEL, folder / "tokenizer.model")
    return folder


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_llama(tmp_path_factory.mktemp("eval") / "base")


def hand_loglikelihood(model: torch.nn.Module, ctx: list[int], cont: list[int]) -> float:
    """sum log p(cont | ctx), one unpadded forward pass, in float64."""
    with torch.no_grad():
        logits = model(torch.tensor([ctx + cont])).logits[0].double()
    logprobs = torch.log_softmax(logits, -1)
    return sum(float(logprobs[len(ctx) - 1 + k, t]) for k, t in enumerate(cont))


def sklearn_free_macro_f1(golds: list[int], preds: list[int]) -> float:
    """Macro-F1 from the confusion matrix: mean over seen labels of 2PR / (P + R)."""
    labels = sorted(set(golds) | set(preds))
    f1s = []
    for c in labels:
        tp = sum(1 for g, p in zip(golds, preds, strict=True) if g == p == c)
        predicted, actual = preds.count(c), golds.count(c)
        prec = tp / predicted if predicted else 0.0
        rec = tp / actual if actual else 0.0
        f1s.append(2 * prec * rec / (prec + rec) if prec + rec else 0.0)
    return sum(f1s) / len(f1s)


def test_kobest_items_match_the_harness_prompts() -> None:
    copa = kobest.load_docs(KOBEST, "copa", "test")
    assert len(copa) == 1000  # every row of the file: none has an empty cell
    # test.tsv row 1: 새로 산 바지의 허리가 컸다. / 결과 / ... / Answer 2
    assert copa[0].text == "새로 산 바지의 허리가 컸다.  그래서"
    assert copa[0].choices == ("바지의 밑단을 잘랐다.", "벨트를 바지에 끼워 사이즈를 조절했다.")
    assert copa[0].gold == 1
    assert copa[1].text.endswith("  왜냐하면")
    boolq = kobest.load_docs(KOBEST, "boolq", "test")
    assert boolq[0].text.startswith("콜라독립 815")
    assert boolq[0].text.endswith(" 질문: 콜라독립 815는 코카콜라에서 만들었나요? 답변: ")
    assert boolq[0].choices == ("아니오", "예") and boolq[0].gold == 0
    senti = kobest.load_docs(KOBEST, "sentineg", "test")
    assert senti[0].text == "문장: 택배사 정말 마음에 듬 긍부정:"  # Text/Label, not *_origin
    assert senti[0].gold == 1
    wic = kobest.load_docs(KOBEST, "wic", "test")
    assert wic[0].text == ("문장1: 토양에 [양분]이 풍부하여 나무가 잘 자란다. "
                           "문장2: 태아는 모체로부터 [양분]과 산소를 공급받게 된다. "
                           "두 문장에서 양분가 같은 뜻으로 쓰였나?")
    assert wic[0].gold == 1
    hella = kobest.load_docs(KOBEST, "hellaswag", "test")
    assert hella[0].text.startswith("문장: 여자는 새벽까지")
    assert len(hella[0].choices) == 4 and hella[0].gold == 3


def test_fewshot_prompts_are_deterministic_and_never_show_the_item() -> None:
    docs = kobest.load_docs(KOBEST, "copa", "dev")[:20]
    pool = kobest.load_docs(KOBEST, "copa", "train")
    a = kobest.fewshot_contexts(docs, pool, 5, seed=1234)
    assert a == kobest.fewshot_contexts(docs, pool, 5, seed=1234)
    assert a != kobest.fewshot_contexts(docs, pool, 5, seed=1)
    # the harness's sampler: one Random(seed), rnd.sample(pool, k) per item in order
    rnd = random.Random(1234)
    for doc, prompt in zip(docs, a, strict=True):
        shown = [pool[i] for i in rnd.sample(range(len(pool)), 5)]
        expected = "".join(f"{ex.text} {ex.choices[ex.gold]}\n\n" for ex in shown) + doc.text
        assert prompt == expected and prompt.count("\n\n") == 5
    # drawing from the evaluated split itself: k + 1 drawn, the item dropped, k kept
    same = kobest.fewshot_contexts(docs, docs, 3, seed=7, same_split=True)
    for doc, prompt in zip(docs, same, strict=True):
        blocks = prompt.split("\n\n")
        assert len(blocks) == 4 and all(not b.startswith(doc.text) for b in blocks[:-1])
    assert kobest.fewshot_contexts(docs, pool, 0, seed=1) == [d.text for d in docs]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 3), st.integers(0, 3)), min_size=1, max_size=40))
def test_macro_f1_matches_an_independent_computation(pairs: list[tuple[int, int]]) -> None:
    golds, preds = [g for g, _ in pairs], [p for _, p in pairs]
    assert kobest.macro_f1(golds, preds) == pytest.approx(sklearn_free_macro_f1(golds, preds))
    try:
        from sklearn.metrics import f1_score
    except ImportError:
        return
    assert kobest.macro_f1(golds, preds) == pytest.approx(f1_score(golds, preds, average="macro"))


@pytest.mark.parametrize("add_bos", [True, False])
def test_scores_are_real_loglikelihoods(base: Path, tmp_path: Path, add_bos: bool) -> None:
    res = evaluate(models=[base], out_dir=tmp_path / "out", kobest_dir=KOBEST, tasks=["copa", "boolq"],
                   max_examples_per_task=6, batch_size=4, add_bos=add_bos, progress=False)
    bos = [1] if add_bos else []
    items = [json.loads(line) for line in res.items.read_text().splitlines()]
    sp = spm.SentencePieceProcessor(model_file=str(LLAMA2_MODEL))
    model = AutoModelForCausalLM.from_pretrained(base).eval()
    for task in ("copa", "boolq"):
        doc = kobest.load_docs(KOBEST, task, "test")[0]
        item = next(r for r in items if r["task"] == task and r["index"] == 0)
        prompt = doc.text.rstrip()  # the harness moves the prompt's trailing space into the continuation
        expected = []
        for choice in doc.choices:
            ctx = [*bos, *sp.encode(prompt)]
            whole = [*bos, *sp.encode(prompt + doc.text[len(prompt):] + " " + choice)]
            expected.append(hand_loglikelihood(model, ctx, whole[len(ctx):]))
        assert item["loglikelihoods"] == pytest.approx(expected, rel=1e-4, abs=1e-4)
        assert item["gold"] == doc.gold
        assert item["pred"] == max(range(len(expected)), key=expected.__getitem__)  # the prediction follows
        # metrics follow from those log-likelihoods
        rows = [r for r in items if r["task"] == task]
        preds = [max(range(len(r["loglikelihoods"])), key=r["loglikelihoods"].__getitem__) for r in rows]
        golds = [r["gold"] for r in rows]
        hits = sum(p == g for p, g in zip(preds, golds, strict=True))
        assert res.score(task, 0, "acc") == pytest.approx(hits / 6)
        assert res.score(task, 0) == pytest.approx(sklearn_free_macro_f1(golds, preds))
    assert (tmp_path / "out" / "manifest.json").is_file() and (tmp_path / "out" / "config.yaml").is_file()


@pytest.mark.parametrize(("window", "share"), [(24, True), (1024, True), (1024, False)])
def test_batched_scores_equal_one_at_a_time_and_truncate_like_the_harness(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, window: int, share: bool
) -> None:
    from kovocab.evaluation import loglikelihood

    shared_calls = []
    real_shared = loglikelihood._shared
    monkeypatch.setattr(loglikelihood, "_shared", lambda *a: shared_calls.append(1) or real_shared(*a))
    folder = tiny_llama(tmp_path / "m", window=window)
    scorer = load_scorer(folder, folder, device="cpu")
    docs = kobest.load_docs(KOBEST, "hellaswag", "dev")[:3] + kobest.load_docs(KOBEST, "copa", "dev")[:3]
    pairs = [scorer.encode_pair(d.text, " " + c) for d in docs for c in d.choices]
    pairs.append(scorer.encode_pair("혼자", " 남은 문장"))  # a context no other pair shares
    batched = continuation_logprobs(scorer, pairs, batch_size=5, progress=False, share_contexts=share)
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    for (ctx, cont), (ll, _) in zip(pairs, batched, strict=True):
        full = (ctx + cont)[-(window + 1):]  # the harness's input; its last token is a target only
        keep = min(len(cont), len(full) - 1)
        assert ll == pytest.approx(hand_loglikelihood(model, full[:-keep], full[-keep:]), rel=1e-4, abs=1e-4)
    # only the choices of an item that fit the window share their context's forward pass
    assert bool(shared_calls) == (share and window == 1024)


def test_bits_per_byte_agrees_after_resizing(base: Path, expanded_tokenizer: Path, tmp_path: Path) -> None:
    resized = resize_embeddings(base, expanded_tokenizer, tmp_path / "resized").out_dir
    text = tmp_path / "en.txt"
    text.write_text("\n".join(ENGLISH_DOCS) + "\n", encoding="utf-8")
    base_sp = spm.SentencePieceProcessor(model_file=str(LLAMA2_MODEL))
    new_sp = spm.SentencePieceProcessor(model_file=str(expanded_tokenizer / "tokenizer.model"))
    assert new_sp.encode(ENGLISH_DOCS) == base_sp.encode(ENGLISH_DOCS)  # no new piece in the text
    res = evaluate(models=[base, resized], names=["base", "adapted"],
                   tokenizers=[LLAMA2_MODEL, expanded_tokenizer], bpb_texts={"en": text}, kobest_dir=KOBEST,
                   tasks=["sentineg"], max_examples_per_task=4, out_dir=tmp_path / "out", progress=False)
    en = res.figures["bpb"]["en"]
    assert en["base"]["tokens"] == en["adapted"]["tokens"] and en["base"]["bytes"] == en["adapted"]["bytes"]
    # Same ids, same hidden states, same logits for the old rows: the resized model differs only
    # by the probability its new LM-head rows take, log2(1 - q) per token, computed here by hand.
    m = AutoModelForCausalLM.from_pretrained(resized).eval()
    leak_bits = 0.0
    for ids in base_sp.encode(ENGLISH_DOCS):
        with torch.no_grad():
            p = torch.softmax(m(torch.tensor([[1, *ids]])).logits[0, :-1].double(), -1)
        leak_bits -= float(torch.log2(1 - p[:, 32000:].sum(-1)).sum())
    nbytes = en["base"]["bytes"]
    assert en["adapted"]["bits_per_byte"] == pytest.approx(en["base"]["bits_per_byte"] + leak_bits / nbytes,
                                                           rel=1e-5)
    # the two models side by side, with deltas
    md = res.eval_md.read_text()
    assert "| figure | base | adapted | Δ adapted − base |" in md
    delta = en["adapted"]["bits_per_byte"] - en["base"]["bits_per_byte"]
    assert f"| bits/byte · en | {en['base']['bits_per_byte']:.4f} | {en['adapted']['bits_per_byte']:.4f} | " \
           f"{delta:+.4f} |" in md
    per_doc = en["base"]["tokens"] / en["base"]["documents"]  # English: the same pieces under both tokenizers
    assert f"| tokens/document · en | {per_doc:.2f} | {per_doc:.2f} | +0.00 |" in md
    assert set(res.figures["kobest"]["sentineg"]["0"]) == {"base", "adapted"}
    assert "### sentineg (4 items)" in md and "| Δ adapted − base |" in md


def test_cli_end_to_end(base: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = tmp_path / "ko.txt"
    text.write_text("안녕하세요, 오늘은 날씨가 좋네요.\n대한민국은 민주공화국이다.\n", encoding="utf-8")
    out = tmp_path / "eval"
    code = main(["eval", "--model", str(base), "--text", f"ko={text}", "--kobest-dir", str(KOBEST),
                 "--tasks", "copa,wic", "--shots", "0,2", "--limit", "3", "--split", "dev", "--out", str(out),
                 "-q"])
    assert code == 0
    figures = json.loads((out / "eval.json").read_text())
    assert set(figures["kobest"]) == {"copa", "wic"} and set(figures["kobest"]["copa"]) == {"0", "2"}
    assert figures["kobest"]["wic"]["2"]["base"]["n"] == 3 and figures["settings"]["kobest_split"] == "dev"
    assert figures["bpb"]["ko"]["base"]["documents"] == 2
    assert "copa 2-shot f1" in capsys.readouterr().out
    md = (out / "eval.md").read_text()
    assert "## KoBEST (f1, macro-averaged)" in md and "| model | 0-shot | 2-shot |" in md


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--kobest-dir", "MISSING", "--tasks", "copa"], "kobest_dir: folder not found"),
        (["--kobest-dir", str(KOBEST), "--tasks", "copa,bogus"], "'bogus' is not one of"),
        (["--tasks", "copa"], "kobest_dir: required"),
        (["--tasks", "none"], "nothing to evaluate"),
    ],
)
def test_cli_bad_inputs(base: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str],
                        message: str) -> None:
    args = [str(tmp_path / a) if a == "MISSING" else a for a in args]
    assert main(["eval", "--model", str(base), "--out", str(tmp_path / "o"), *args]) == 1
    err = capsys.readouterr().err
    assert err.startswith("kovocab: error:") and message in err


def test_missing_model_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["eval", "--model", str(tmp_path / "nope"), "--kobest-dir", str(KOBEST), "--out",
                 str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("kovocab: error:") and "models: folder not found" in err and "nope" in err
    with pytest.raises(ConfigError, match="shots"):
        evaluate(EvalConfig(models=(tmp_path,), out_dir=tmp_path, tasks=(), shots=(-1,)))


def test_document_batches_respect_the_logits_budget(base: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from kovocab.evaluation import scoring

    scorer = load_scorer(base, base, device="cpu")
    calls: list[int] = []
    real = scoring.score_batch
    monkeypatch.setattr(scoring, "score_batch", lambda m, s, d: calls.append(len(s)) or real(m, s, d))
    whole = scoring.document_nll(scorer, ENGLISH_DOCS, batch_size=8)
    assert calls == [3]
    monkeypatch.setattr(scoring, "LOGITS_BUDGET", 1)  # every document on its own
    calls.clear()
    assert scoring.document_nll(scorer, ENGLISH_DOCS, batch_size=8) == pytest.approx(whole, rel=1e-5)
    assert calls == [1, 1, 1]


def test_config_vocab_size_disagreeing_with_the_weights_is_a_clear_error(tmp_path: Path) -> None:
    folder = tiny_llama(tmp_path / "m")
    config = json.loads((folder / "config.json").read_text())
    config["vocab_size"] = 32064
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(InputError, match=r"eval\.models: .*config\.json says vocab_size 32064 but "
                                         r"model\.embed_tokens\.weight in the weights has 32000 rows"):
        load_scorer(folder, folder, device="cpu", what="eval.models")


def test_metrics_have_the_harness_names_and_acc_norm_only_for_hellaswag() -> None:
    for task, norm in [("hellaswag", True), ("copa", False), ("boolq", False)]:
        docs = kobest.load_docs(KOBEST, task, "test")[:40]
        rnd = random.Random(0)
        lls = [[-rnd.random() * 10 for _ in d.choices] for d in docs]
        m = kobest.task_metrics(docs, lls, task)
        assert "macro_f1" not in m and m["f1"] == kobest.macro_f1([d.gold for d in docs],
                                                                   [max(range(len(x)), key=x.__getitem__)
                                                                    for x in lls])
        assert set(m) == {"acc", "acc_stderr", "f1", "n", *(("acc_norm", "acc_norm_stderr") if norm else ())}
        if norm:  # the harness's mean stderr: sqrt(p (1 - p) / (n - 1))
            p = m["acc_norm"]
            assert m["acc_norm_stderr"] == pytest.approx((p * (1 - p) / (len(docs) - 1)) ** 0.5)


def test_bos_follows_the_model_hugging_face_tokenizer(base: Path, tmp_path: Path) -> None:
    from kovocab.tokenizer.export import load_proto, write_hf_tokenizer

    folder = tmp_path / "m"
    shutil.copytree(base, folder)
    assert load_scorer(folder, folder, device="cpu").add_bos  # tokenizer.model alone: Llama's default
    write_hf_tokenizer(load_proto(LLAMA2_MODEL), folder, 1024)
    assert load_scorer(folder, folder, device="cpu").add_bos
    tok = json.loads((folder / "tokenizer.json").read_text())
    tok["post_processor"] = None  # a tokenizer that adds no BOS
    (folder / "tokenizer.json").write_text(json.dumps(tok))
    scorer = load_scorer(folder, folder, device="cpu")
    assert not scorer.add_bos and scorer.encode("가") == scorer.sp.encode("가")
    assert load_scorer(folder, folder, device="cpu", add_bos=True).add_bos  # set explicitly: it wins
    assert EvalConfig.__dataclass_fields__["add_bos"].default is None


def test_notes_say_where_we_differ_from_the_harness() -> None:
    from kovocab.evaluation.tables import HARNESS_NOTES

    notes = " ".join(HARNESS_NOTES.split())
    assert "the harness takes log_softmax of the logits in the model's dtype" in notes
    assert "kovocab computes them in float32" in notes
    assert "acc_norm with acc_norm_stderr for HellaSwag only" in notes and "f1 (macro-averaged" in notes
