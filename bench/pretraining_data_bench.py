"""Pretraining data: tokenise-once token store and block packing against their references, same run.

    .venv/bin/python bench/pretraining_data_bench.py [--corpus runs/corpus] [--tokenizer FOLDER]

1. Shards corpora/nsmc_novels.yaml into --corpus if it does not exist yet; needs the expanded
   tokenizer of tokenizers/llama2-ko-46k.yaml (`kovocab merge-vocab`) in --tokenizer.
2. build_token_store() on the train split, from scratch (all cores), against the same texts,
   already in memory, through `tokenizers.Tokenizer.encode_batch` in batches of 1000 (all
   cores, Rust threads): MB/s and tokens/s, and their ratio. Then the reuse of the finished store.
3. Store size against int32 and int64 arrays of the same ids.
4. Packed tokens/s on one core (`taskset -c 0`, OMP_NUM_THREADS=1, in a child process) of
   PackedBlocks.next_batch, without and with 25% English replay (news, same tokenizer),
   against Hugging Face run_clm.py's `group_texts` on Python lists (what datasets.map runs)
   and `datasets.Dataset.map(group_texts, batched=True)` itself. Floor: 1M tokens/s.
Writes results.json in --out and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from benchdata import ROOT, news_file

FLOOR_TOKENS_S = 1e6


def ensure_inputs(corpus: Path, tokenizer: Path) -> None:
    if not corpus.exists():
        print(f"sharding corpora/nsmc_novels.yaml into {corpus} ...", flush=True)
        recipe = ROOT / "corpora" / "nsmc_novels.yaml"
        cmd = [sys.executable, "-m", "kovocab", "shard", "--recipe", str(recipe), "--out", str(corpus)]
        subprocess.run(cmd, check=True)
    if not (tokenizer / "tokenizer.json").is_file():
        raise SystemExit(
            f"no expanded tokenizer in {tokenizer}: build it first with\n"
            "  .venv/bin/kovocab merge-vocab --recipe tokenizers/llama2-ko-46k.yaml\n"
            "(or give --tokenizer FOLDER holding a tokenizer.json)"
        )


def bench_store(corpus: Path, tokenizer: Path, out: Path, max_docs: int | None) -> dict[str, Any]:
    """The reference first (texts already in memory), then two fresh builds and a reuse."""
    from tokenizers import Tokenizer

    from kovocab.pretraining.token_store import TokenStoreConfig, build_token_store, iter_documents

    def config(workers: int) -> TokenStoreConfig:
        return TokenStoreConfig(sources=(corpus,), tokenizer=tokenizer, out_dir=out / "store",
                                max_documents=max_docs, workers=workers)

    texts = [x for x in iter_documents(config(0)) if x.strip()]
    tok = Tokenizer.from_file(str(tokenizer / "tokenizer.json"))
    t = time.perf_counter()
    direct_tokens = 0
    for i in range(0, len(texts), 1000):
        encoded = tok.encode_batch(texts[i : i + 1000], add_special_tokens=False)
        direct_tokens += sum(len(e.ids) for e in encoded)
    direct_s = time.perf_counter() - t
    rows = [{"name": "Tokenizer.encode_batch, texts in memory (Rust threads)", "s": direct_s}]
    for workers in (1, 0):
        shutil.rmtree(out / "store", ignore_errors=True)
        t = time.perf_counter()
        store = build_token_store(config(workers), progress=False)
        how = "Rust threads" if workers == 1 else f"{store.manifest['stats']['workers']} processes"
        rows.append({"name": f"build_token_store, workers={workers} ({how}): read, tokenise, write",
                     "s": time.perf_counter() - t})
    t = time.perf_counter()
    build_token_store(config(0), progress=False)
    reuse_s = time.perf_counter() - t
    assert direct_tokens == store.num_tokens, (direct_tokens, store.num_tokens)
    mb = store.manifest["stats"]["text_bytes"] / 1e6
    index_bytes = (store.path / "index.npy").stat().st_size
    for row in rows:
        sec = row["s"]
        row.update(s=round(sec, 2), mb_s=round(mb / sec, 2), tokens_s=round(store.num_tokens / sec),
                   vs_encode_batch=round(direct_s / sec, 3))
    return {
        "documents": store.num_documents, "tokens": store.num_tokens, "text_mb": round(mb, 2), "rows": rows,
        "reuse_s": round(reuse_s, 3), "dtype": str(store.tokens.dtype),
        "store_bytes": store.tokens.nbytes + index_bytes,
        "int32_bytes": store.num_tokens * 4 + index_bytes, "int64_bytes": store.num_tokens * 8 + index_bytes,
    }


def group_texts_lists(store: Any, order: np.ndarray, seq_len: int, batch_docs: int = 1000) -> Any:
    """run_clm.py's group_texts on Python lists, fed as datasets.map feeds it (Arrow -> lists)."""
    bos, eos = store.bos_id, store.eos_id
    for i in range(0, len(order), batch_docs):
        docs = order[i : i + batch_docs]
        examples = {"input_ids": [[bos, *store.document(int(j)).tolist(), eos] for j in docs]}
        concatenated = {k: list(itertools.chain(*examples[k])) for k in examples}
        total = (len(concatenated["input_ids"]) // seq_len) * seq_len
        yield from (np.array(t[j : j + seq_len], dtype=np.int64)
                    for t in concatenated.values() for j in range(0, total, seq_len))


def pack_rates(store_dir: Path, replay_dir: Path, seq_len: int, seconds: float) -> dict[str, Any]:
    """Runs in the pinned child: tokens/s of each packer for about `seconds` each."""
    from kovocab.pretraining.packing import PackedBlocks
    from kovocab.pretraining.token_store import TokenStore

    store, replay = TokenStore.open(store_dir), TokenStore.open(replay_dir)
    micro = max(1, 16384 // seq_len)

    def rate(step: Any) -> float:
        tokens, t = 0, time.perf_counter()
        while time.perf_counter() - t < seconds:
            tokens += step()
        return tokens / (time.perf_counter() - t)

    plain = PackedBlocks(store, seq_len, seed=0)
    mixed = PackedBlocks(store, seq_len, seed=0, replay=replay, replay_ratio=0.25)
    order = np.random.default_rng(0).permutation(store.num_documents)
    # Regenerated every epoch: itertools.cycle would replay cached blocks and measure nothing.
    naive = itertools.chain.from_iterable(group_texts_lists(store, order, seq_len) for _ in itertools.count())
    out = {
        "packed": rate(lambda: plain.next_batch(micro).size),
        "packed_replay_25": rate(lambda: mixed.next_batch(micro).size),
        "group_texts_lists": rate(lambda: sum(next(naive).size for _ in range(micro))),
    }
    # datasets.map itself (Arrow in, Arrow out) on a slice of the documents, timed once.
    import datasets

    datasets.disable_progress_bars()
    sub = order[:20000]
    bos, eos = store.bos_id, store.eos_id
    rows = [[bos, *store.document(int(j)).tolist(), eos] for j in sub]
    ds = datasets.Dataset.from_dict({"input_ids": rows})

    def group_texts(examples: dict[str, list[list[int]]]) -> dict[str, list[list[int]]]:
        concatenated = list(itertools.chain(*examples["input_ids"]))
        total = (len(concatenated) // seq_len) * seq_len
        return {"input_ids": [concatenated[i : i + seq_len] for i in range(0, total, seq_len)]}

    t = time.perf_counter()
    grouped = ds.map(group_texts, batched=True, batch_size=1000, remove_columns=["input_ids"],
                     keep_in_memory=True).with_format("numpy")
    produced = sum(grouped[i : i + micro]["input_ids"].size for i in range(0, len(grouped), micro))
    out["datasets_map_group_texts"] = produced / (time.perf_counter() - t)
    return {k: round(v) for k, v in out.items()} | {"seq_len": seq_len, "micro_batch": micro}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", type=Path, default=ROOT / "runs" / "corpus")
    ap.add_argument("--tokenizer", type=Path, default=ROOT / "runs" / "llama2-ko-46k" / "tokenizer")
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "bench-pretraining-data")
    ap.add_argument("--seq-len", type=int, nargs="+", default=[2048, 4096])
    ap.add_argument("--seconds", type=float, default=3.0, help="per packer and sequence length")
    ap.add_argument("--max-documents", type=int, default=None, help="tokenise only this many (quick runs)")
    ap.add_argument("--pack-only", nargs=2, type=Path, metavar=("STORE", "REPLAY"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.pack_only:
        print(json.dumps([pack_rates(*args.pack_only, n, args.seconds) for n in args.seq_len]))
        return 0
    from kovocab.pretraining.token_store import TokenStoreConfig, build_token_store

    args.out.mkdir(parents=True, exist_ok=True)
    ensure_inputs(args.corpus, args.tokenizer)
    store = bench_store(args.corpus, args.tokenizer, args.out, args.max_documents)
    english = news_file("en", args.out)
    replay = build_token_store(TokenStoreConfig(sources=(english,), tokenizer=args.tokenizer,
                                                out_dir=args.out / "replay_store"), progress=False)
    pin = ["taskset", "-c", "0"] if shutil.which("taskset") else []
    cmd = [*pin, sys.executable, __file__, "--pack-only", str(args.out / "store"), str(replay.path),
           "--seconds", str(args.seconds), "--seq-len", *map(str, args.seq_len)]
    env = dict(os.environ, OMP_NUM_THREADS="1", RAYON_RS_NUM_THREADS="1")
    packing = json.loads(subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout)
    print(f"\ntoken store: {store['documents']:,} documents, {store['text_mb']} MB of text, "
          f"{store['tokens']:,} tokens ({store['dtype']})")
    print("| tokenise | s | MB/s | tokens/s | vs encode_batch |\n|---|---:|---:|---:|---:|")
    for row in store["rows"]:
        print(f"| {row['name']} | {row['s']} | {row['mb_s']} | {row['tokens_s']:,} | "
              f"{row['vs_encode_batch']}x |")
    print(f"\nreuse of the finished store: {store['reuse_s']} s")
    print(f"store size: {store['store_bytes'] / 1e6:.1f} MB vs int32 {store['int32_bytes'] / 1e6:.1f} MB, "
          f"int64 {store['int64_bytes'] / 1e6:.1f} MB")
    print(f"\npacked tokens/s on one core ({'taskset -c 0' if pin else 'unpinned'}, OMP_NUM_THREADS=1):")
    print("| seq_len | PackedBlocks | + 25% replay | group_texts (lists) | datasets.map(group_texts) |")
    print("|---:|---:|---:|---:|---:|")
    for r in packing:
        print(f"| {r['seq_len']} | {r['packed']:,} | {r['packed_replay_25']:,} | "
              f"{r['group_texts_lists']:,} | {r['datasets_map_group_texts']:,} |")
    worst = min(min(r["packed"], r["packed_replay_25"]) for r in packing)
    verdict = "meets" if worst >= FLOOR_TOKENS_S else "MISSES"
    print(f"\nslowest PackedBlocks rate {worst:,} tokens/s: {verdict} the {FLOOR_TOKENS_S:,.0f} "
          "tokens/s floor")
    (args.out / "results.json").write_text(json.dumps({"store": store, "packing": packing,
                                                       "floor_tokens_s": FLOOR_TOKENS_S}, indent=2) + "\n")
    print(f"results: {args.out / 'results.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
