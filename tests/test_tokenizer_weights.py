"""Per-source weights (`source_weights`) on real Korean shards: factors, caps, determinism,
the manifest, name typos, real sentencepiece training and token stores."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from conftest import DATA, ROOT

from kovocab.cli import main
from kovocab.config import load_section, read_recipe
from kovocab.errors import ConfigError, InputError
from kovocab.tokenizer.weights import SourceWeight, WeightedCorpus, count_sources

FORMAL = DATA / "korean_formal"


@pytest.fixture(scope="module")
def mixed_shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Four real sources: novels, the Constitution, Wikinews and KorNLI/KorSTS sentences."""
    from kovocab.corpus import ShardConfig, shard_corpus
    from kovocab.corpus.options import SourceConfig

    out = tmp_path_factory.mktemp("mixed") / "corpus"
    cfg = ShardConfig(
        sources=(
            SourceConfig(name="koconovel", paths=(str(DATA / "koconovel" / "text" / "*.text.jsonl"),),
                         format="jsonl", field="text"),
            SourceConfig(name="kolaw", txt_mode="paragraph",
                         paths=(str(DATA / "konlpy_corpus" / "kolaw" / "constitution.txt"),)),
            SourceConfig(name="wikinews", format="txt",
                         paths=(str(FORMAL / "wikinews_ko_boddari" / "wikinews_ko_boddari.txt.xz"),)),
            SourceConfig(name="kornlu", format="txt",
                         paths=(str(FORMAL / "kornlu_xnli_sts" / "kornlu_xnli_sts.txt.xz"),)),
        ),
        out=out, shards=2, eval_permille=10,
    )
    shard_corpus(cfg, progress=False)
    return out


def by_source(corpus: WeightedCorpus) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for source, text in corpus.labelled():
        out.setdefault(source, []).append(text)
    return out


def test_factors_scale_each_source_exactly(mixed_shards: Path) -> None:
    before = count_sources([mixed_shards])
    assert set(before) == {"koconovel", "kolaw", "wikinews", "kornlu"}
    weights = {"kornlu": SourceWeight(weight=0.25), "kolaw": SourceWeight(weight=3),
               "wikinews": SourceWeight(weight=0), "koconovel": SourceWeight(weight=1.5)}
    corpus = WeightedCorpus((mixed_shards,), weights, seed=0)
    docs = by_source(corpus)
    n = {s: c.documents for s, c in before.items()}
    assert len(docs["kornlu"]) == round(0.25 * n["kornlu"])  # a seeded quarter
    assert len(docs["kolaw"]) == 3 * n["kolaw"]  # each document three times
    assert "wikinews" not in docs  # weight 0: left out
    assert len(docs["koconovel"]) == n["koconovel"] + round(0.5 * n["koconovel"])
    assert len(set(docs["kornlu"])) == len(docs["kornlu"])  # down-sampling never repeats
    # The manifest records the weights and each source's contribution before and after.
    m = corpus.manifest()
    assert m["source_weights"]["kornlu"] == {"weight": 0.25, "max_share": None}
    kolaw = m["sources"]["kolaw"]
    assert kolaw["documents"] == n["kolaw"] and kolaw["documents_weighted"] == 3 * n["kolaw"]
    assert kolaw["characters_weighted"] == 3 * kolaw["characters"] == 3 * before["kolaw"].characters
    assert m["sources"]["wikinews"]["characters_weighted"] == 0
    assert sum(s["share_weighted"] for s in m["sources"].values()) == pytest.approx(1, abs=1e-5)


def test_max_share_caps_a_source_and_the_others_fill_the_rest(mixed_shards: Path) -> None:
    before = count_sources([mixed_shards])
    total = sum(c.characters for c in before.values())
    assert before["koconovel"].characters / total > 0.3  # the novels are the biggest source here
    weights = {"koconovel": SourceWeight(max_share=0.2), "kornlu": SourceWeight(weight=2, max_share=0.5)}
    m = WeightedCorpus((mixed_shards,), weights, seed=0)
    list(m)
    shares = {s: v["share_weighted"] for s, v in m.manifest()["sources"].items()}
    # Documents are whole, so a cap holds to within one document's characters (< 1%).
    assert shares["koconovel"] == pytest.approx(0.2, abs=0.01)
    assert m.counts["koconovel"].factor < 1  # capped: its factor was lowered
    assert m.counts["wikinews"].factor == 1 and m.counts["kolaw"].factor == 1
    assert shares["kornlu"] <= 0.5 + 0.01
    # A cap never raises a source: a loose cap changes nothing.
    loose = WeightedCorpus((mixed_shards,), {"kolaw": SourceWeight(max_share=0.9)}, seed=0)
    list(loose)
    assert loose.counts["kolaw"].documents_weighted == before["kolaw"].documents


def test_caps_that_cannot_hold_are_refused(mixed_shards: Path) -> None:
    weights = {s: SourceWeight(max_share=0.1) for s in ("koconovel", "kolaw", "wikinews", "kornlu")}
    with pytest.raises(InputError, match="cannot all hold"):
        list(WeightedCorpus((mixed_shards,), weights))
    nothing = {s: SourceWeight(weight=0) for s in ("koconovel", "kolaw", "wikinews", "kornlu")}
    with pytest.raises(InputError, match="leave no text to sample"):
        list(WeightedCorpus((mixed_shards,), nothing))


def test_weighting_is_seeded_and_deterministic(mixed_shards: Path) -> None:
    weights = {"kornlu": SourceWeight(weight=0.3), "wikinews": SourceWeight(weight=1.7)}
    first = list(WeightedCorpus((mixed_shards,), weights, seed=7))
    assert first == list(WeightedCorpus((mixed_shards,), weights, seed=7))
    other = list(WeightedCorpus((mixed_shards,), weights, seed=8))
    assert len(other) == len(first) and other != first  # same sizes, another seeded choice
    # A source's choice depends on the seed and its own name only, not on the other weights.
    alone = by_source(WeightedCorpus((mixed_shards,), {"kornlu": SourceWeight(weight=0.3)}, seed=7))
    assert alone["kornlu"] == by_source(WeightedCorpus((mixed_shards,), weights, seed=7))["kornlu"]


def test_unknown_source_name_is_an_error_naming_the_known_sources(
    mixed_shards: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(InputError) as exc:
        list(WeightedCorpus((mixed_shards,), {"wikinew": SourceWeight(weight=2)}))
    msg = str(exc.value)
    assert "'wikinew'" in msg and "did you mean 'wikinews'" in msg
    assert "koconovel, kolaw, kornlu, wikinews" in msg
    recipe = tmp_path / "tok.yaml"
    recipe.write_text(yaml.safe_dump({"tokenizer_training": {
        "corpus": [str(mixed_shards)], "out_dir": str(tmp_path / "out"), "vocab_size": 1000,
        "source_weights": {"kolaww": {"weight": 0.5}},
    }}), encoding="utf-8")
    assert main(["train-tokenizer", "--recipe", str(recipe)]) == 1
    err = capsys.readouterr().err
    assert "kovocab: error: tokenizer_training.corpus: source_weights names 'kolaww'" in err
    assert "its sources: koconovel, kolaw, kornlu, wikinews" in err
    assert not (tmp_path / "out" / "korean_bpe.model").exists()


def test_config_builds_weights_and_reports_bad_values() -> None:
    from kovocab.tokenizer.expand import ExpandVocabConfig

    section = {"base": "b", "corpus": ["c"], "out_dir": "o",
               "source_weights": {"nsmc": {"max_share": 0.4}, "ko_laws_legalize": {"weight": 0.1}}}
    cfg = load_section(ExpandVocabConfig, {"expand_vocab": section}, "expand_vocab")
    assert cfg.source_weights == {"nsmc": SourceWeight(max_share=0.4),
                                  "ko_laws_legalize": SourceWeight(weight=0.1)}
    bad = {**section, "source_weights": {"nsmc": {"weight": -1, "max_share": 1.5}, "x": {"wieght": 2}}}
    with pytest.raises(ConfigError) as exc:
        load_section(ExpandVocabConfig, {"expand_vocab": bad}, "expand_vocab")
    msg = str(exc.value)
    assert "expand_vocab.source_weights.nsmc.weight: must be 0 or more" in msg
    assert "expand_vocab.source_weights.nsmc.max_share: must be in (0, 1]" in msg
    assert "expand_vocab.source_weights.x.wieght: unknown key; did you mean 'weight'?" in msg


def test_default_tokenizer_recipe_weights_name_sources_of_its_corpus_recipe() -> None:
    """tokenizers/llama2_ko_46k.yaml weights the sources of corpora/korean_mix.yaml, by their names."""
    from kovocab.corpus import load_shard_config
    from kovocab.tokenizer.expand import ExpandVocabConfig

    tok = read_recipe(ROOT / "tokenizers" / "llama2_ko_46k.yaml")
    cfg = load_section(ExpandVocabConfig, tok, "expand_vocab")
    mix = read_recipe(ROOT / "corpora" / "korean_mix.yaml")
    shard = load_shard_config({**mix, "shard": {**mix["shard"], "out": "x"}})
    names = {s.name for s in shard.sources}
    assert cfg.source_weights and set(cfg.source_weights) <= names
    assert cfg.source_weights["ko_laws_legalize"].weight < 1  # law is down-weighted
    assert not names & {"klue_nli_premise", "kobest_boolq_text"}  # never the evaluation text


def test_train_tokenizer_samples_by_weight_and_records_it(mixed_shards: Path, tmp_path: Path) -> None:
    from kovocab.tokenizer.train import TokenizerTrainingConfig, train_tokenizer

    weights = {"kolaw": SourceWeight(weight=0), "kornlu": SourceWeight(weight=0.5)}
    res = train_tokenizer(TokenizerTrainingConfig(corpus=(mixed_shards,), out_dir=tmp_path / "w",
                                                  vocab_size=3000, source_weights=weights))
    manifest = json.loads((tmp_path / "w" / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["source_weights"]["kornlu"]["weight"] == 0.5
    src = manifest["sources"]
    assert src["kolaw"]["sample_sentences"] == 0 and src["kolaw"]["documents"] > 0
    assert src["kornlu"]["documents_weighted"] == round(0.5 * src["kornlu"]["documents"])
    assert sum(s["sample_sentences"] for s in src.values()) == res.sentences
    # Constitution-only words are rarer without it: the weighted model is not the plain one.
    plain = train_tokenizer(TokenizerTrainingConfig(corpus=(mixed_shards,), out_dir=tmp_path / "p",
                                                    vocab_size=3000))
    assert plain.sentences > res.sentences
    assert (tmp_path / "w" / "korean_bpe.model").read_bytes() != plain.model_path.read_bytes()
    # Seeded: the same weights give the same model, byte for byte.
    again = train_tokenizer(TokenizerTrainingConfig(corpus=(mixed_shards,), out_dir=tmp_path / "w2",
                                                    vocab_size=3000, source_weights=weights))
    assert again.model_path.read_bytes() == res.model_path.read_bytes()


def test_token_store_respects_the_weights(mixed_shards: Path, tmp_path: Path) -> None:
    from kovocab.pretraining.token_store import TokenStoreConfig, build_token_store

    tok = DATA / "tokenizers" / "llama2_hf_json"
    before = count_sources([mixed_shards])
    weights = {"kornlu": SourceWeight(weight=0.2), "kolaw": SourceWeight(weight=2),
               "koconovel": SourceWeight(weight=0)}
    cfg = TokenStoreConfig(sources=(mixed_shards,), tokenizer=tok, out_dir=tmp_path / "s",
                           workers=1, source_weights=weights)
    store = build_token_store(cfg, progress=False)
    expected = round(0.2 * before["kornlu"].documents) + 2 * before["kolaw"].documents
    expected += before["wikinews"].documents
    assert store.num_documents == expected
    assert store.manifest["sources"]["koconovel"]["documents_weighted"] == 0
    assert store.manifest["source_weights"]["kolaw"] == {"weight": 2.0, "max_share": None}
    # The weights are part of what the store depends on: other weights rebuild it.
    plain = build_token_store(TokenStoreConfig(sources=(mixed_shards,), tokenizer=tok, out_dir=tmp_path / "s",
                                               workers=1), progress=False)
    assert plain.num_documents == sum(c.documents for c in before.values())


def test_run_passes_the_tokenizer_weights_to_pretraining() -> None:
    """`kovocab run`: pretrain.source_weights defaults to expand_vocab.source_weights."""
    from kovocab.run import plan_recipe

    recipe = read_recipe(ROOT / "recipes" / "tiny_cpu.yaml")
    recipe["expand_vocab"] = {**recipe["expand_vocab"], "source_weights": {"nsmc": {"weight": 0.5}}}
    plan = dict(plan_recipe(recipe))
    assert plan["pretrain"].source_weights == {"nsmc": SourceWeight(weight=0.5)}
    recipe["pretrain"] = {**recipe["pretrain"], "source_weights": {"kolaw": {"weight": 2}}}
    assert dict(plan_recipe(recipe))["pretrain"].source_weights == {"kolaw": SourceWeight(weight=2)}
