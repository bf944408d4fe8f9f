"""`kovocab import-gguf` on the real SmolLM2-135M-Instruct GGUF, against transformers reading the GGUF.

    .venv/bin/python bench/gguf_bench.py [--out runs/smollm2_135m] [--lines 200]

1. kovocab: `kovocab import-gguf` of ../shared/data/models/smollm2_135m_instruct (Q4_1, Q8_0
   embedding) into --out, in a child process (wall time); a second call must reuse it.
2. Reference: transformers' `from_pretrained(folder, gguf_file=...)` of the same file, in
   this process (wall time), and the converted folder loaded with `from_pretrained(out)`.
3. Figures: largest logit difference between the two on English news lines (must be 0: the
   same de-quantised weights), bits per byte of those lines under the converted model
   against chance (log2 of the vocabulary per token), tied or not, and the tokenizer: the
   saved tokenizer.json against transformers' GGUF tokenizer on the same lines (the digit
   split changes nothing when no merge holds a digit) and on " 123 abc".
Writes gguf_bench.json in --out's parent and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from pathlib import Path

from benchdata import DATA, ROOT, news_lines

GGUF = DATA / "models" / "smollm2_135m_instruct" / "SmolLM2-135M-Instruct.Q4_1.gguf"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "smollm2_135m")
    ap.add_argument("--lines", type=int, default=200, help="English news dev lines scored")
    args = ap.parse_args()
    import torch
    from tokenizers import Tokenizer
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cmd = [sys.executable, "-m", "kovocab", "import-gguf", "--gguf", str(GGUF), "--out", str(args.out)]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True)
    convert_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    again = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    reuse_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    ref = AutoModelForCausalLM.from_pretrained(str(GGUF.parent), gguf_file=GGUF.name).eval()
    ref_tok = AutoTokenizer.from_pretrained(str(GGUF.parent), gguf_file=GGUF.name)
    reference_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    ours = AutoModelForCausalLM.from_pretrained(str(args.out)).eval()
    load_s = time.perf_counter() - t0
    saved = Tokenizer.from_file(str(args.out / "tokenizer.json"))

    lines = [line for line in news_lines("en") if line.strip()][: args.lines]
    same_ids = sum(saved.encode(x).ids == ref_tok(x).input_ids for x in lines)
    nll_bits, nbytes, tokens, max_diff = 0.0, 0, 0, 0.0
    with torch.no_grad():
        for line in lines:
            ids = torch.tensor([saved.encode(line).ids])
            a, b = ours(ids).logits, ref(ids).logits
            max_diff = max(max_diff, float((a - b).abs().max()))
            logp = torch.log_softmax(a[0, :-1].float(), -1).gather(1, ids[0, 1:, None])
            nll_bits -= float(logp.sum()) / math.log(2)
            nbytes += len(line.encode("utf-8"))  # the first token is not predicted: a slight flattery
            tokens += ids.shape[1] - 1
    vocab = ours.config.vocab_size
    manifest = json.loads((args.out / "manifest.json").read_text())
    figures = {
        "gguf": str(GGUF), "convert_s": round(convert_s, 1), "reuse_s": round(reuse_s, 1),
        "reused": "already converted" in again, "transformers_gguf_load_s": round(reference_s, 1),
        "converted_load_s": round(load_s, 1), "max_abs_logit_diff": max_diff, "lines": len(lines),
        "bits_per_byte": nll_bits / nbytes, "bits_per_token": nll_bits / tokens,
        "chance_bits_per_token": math.log2(vocab), "vocab_size": vocab,
        "tied": ours.get_output_embeddings().weight is ours.get_input_embeddings().weight,
        "same_ids_as_transformers_gguf_tokenizer": same_ids,
        "pre_tokenized_123_abc": [p for p, _ in saved.pre_tokenizer.pre_tokenize_str(" 123 abc")],
        "manifest_stats": manifest["stats"], "gguf_sha256": manifest["inputs"]["gguf_sha256"],
    }
    out = args.out.parent / "gguf_bench.json"
    out.write_text(json.dumps(figures, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    print("| figure | value |\n|---|---:|")
    for k, v in figures.items():
        if k not in ("manifest_stats",):
            print(f"| {k} | {v if not isinstance(v, float) else f'{v:.4g}'} |")
    print(f"\nfigures: {out}")


if __name__ == "__main__":
    main()
