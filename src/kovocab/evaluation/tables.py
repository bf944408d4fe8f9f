"""eval.json figures -> eval.md: bits per byte and KoBEST tables, models side by side with deltas.

The KoBEST tables follow the Llama-2-Ko model card (one table per task, models as rows,
0/5/10/50-shot as columns, macro-F1); a summary puts every figure of every model in one row.
"""

from __future__ import annotations

import math
from typing import Any

HARNESS_NOTES = """\
How these numbers relate to lm-evaluation-harness (`lm_eval --tasks kobest_*`):

- Same prompts, choices, target and few-shot delimiters (" " and a blank line), and the same
  metrics under the same names as lm_eval/tasks/kobest/*.yaml and utils.py: acc with
  acc_stderr for every task, acc_norm with acc_norm_stderr for HellaSwag only, and f1
  (macro-averaged, sklearn's f1_score average="macro"; no stderr, as in the harness).
  Items come from the original KoBEST TSVs mapped to HF skt/kobest_v1's fields as its
  loading script does (pandas, rows with empty cells dropped).
- Scoring is the harness's HFLM loglikelihood: trailing spaces of the prompt move into the
  continuation, the continuation is what encoding prompt + continuation adds after the
  prompt's tokens, and the input is left-truncated to the model's window.
- Few-shot examples come from the train split, drawn as the harness's default sampler does
  (one random.Random(seed) per task and shot count, rnd.sample per item in order); seed 1234
  is lm_eval's default --fewshot_seed, so with the same seed and item limit the examples match.
- Differences: tokens come from the SentencePiece model (what Llama's HF tokenizer
  reproduces); BOS is prepended when the model's Hugging Face tokenizer adds it (the
  harness's default), unless add_bos says otherwise (older harness versions, such as the
  polyglot branch behind the Llama-2-Ko card, sent no BOS: set add_bos: false).
  Log-probabilities: the harness takes log_softmax of the logits in the model's dtype
  (bfloat16 weights: bfloat16 log-probabilities); kovocab computes them in float32
  whatever the weights' dtype, so with bf16 weights the two differ by bf16 rounding
  (with float32 weights they agree to ~1e-5);
  an example identical to the evaluated item would be dropped (none exists in KoBEST's
  splits). The card's figures used the polyglot branch's KoBEST prompts, which may differ
  in wording, so compare our numbers with each other first and with the card second.
- Bits per byte: the documents' total NLL (BOS excluded, sliding window) over their UTF-8
  bytes; unlike perplexity it does not depend on the tokenizer.
"""


def _fmt(x: Any, digits: int = 4) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    return f"{x:.{digits}f}" if isinstance(x, float) else str(x)


def _delta(x: Any, base: Any, digits: int = 4) -> str:
    if x is None or base is None or any(isinstance(v, float) and math.isnan(v) for v in (x, base)):
        return "–"
    return f"{x - base:+.{digits}f}"


def _table(header: list[str], rows: list[list[str]], text_columns: int = 1) -> list[str]:
    rule = "|" + "|".join("---" if i < text_columns else "---:" for i in range(len(header))) + "|"
    lines = ["| " + " | ".join(header) + " |", rule]
    return lines + ["| " + " | ".join(r) + " |" for r in rows]


def _summary(figures: dict[str, Any]) -> list[str]:
    """One row per figure (bits/byte per text set, acc and macro-F1 per task and shots), models as columns."""
    names = [m["name"] for m in figures["models"]]
    rows: list[list[str]] = []
    for text, per_model in figures.get("bpb", {}).items():
        vals = [per_model[n]["bits_per_byte"] for n in names]
        rows.append([f"bits/byte · {text}", *map(_fmt, vals), *(_delta(v, vals[0]) for v in vals[1:])])
    for text, per_model in figures.get("bpb", {}).items():  # under each model's own tokenizer
        vals = [per_model[n]["tokens"] / per_model[n]["documents"] for n in names]
        rows.append([f"tokens/document · {text}", *(_fmt(v, 2) for v in vals),
                     *(_delta(v, vals[0], 2) for v in vals[1:])])
    for task, per_shots in figures.get("kobest", {}).items():
        for shots, per_model in per_shots.items():
            for metric in ("acc", "f1"):
                vals = [per_model[n][metric] for n in names]
                rows.append([f"{task} {shots}-shot {metric}", *map(_fmt, vals),
                             *(_delta(v, vals[0]) for v in vals[1:])])
    deltas = [f"Δ {n} − {names[0]}" for n in names[1:]]
    return _table(["figure", *names, *deltas], rows) if rows else []


def render_summary(figures: dict[str, Any]) -> str:
    """The summary table alone, for the terminal."""
    return "\n".join(_summary(figures))


def render_markdown(figures: dict[str, Any]) -> str:
    """The Markdown report of eval.json's content."""
    names = [m["name"] for m in figures["models"]]
    base = names[0]
    deltas = [f"Δ {n} − {base}" for n in names[1:]]
    out = ["# kovocab eval", ""]
    out += _table(["model", "folder", "tokenizer", "pieces"],
                  [[m["name"], f"`{m['model']}`", f"`{m['tokenizer']}`", str(m["pieces"])]
                   for m in figures["models"]], text_columns=3)
    s = figures["settings"]
    limit = s["max_examples_per_task"] or "all"
    bos = "/".join(dict.fromkeys("on" if m.get("add_bos", s["add_bos"]) else "off"
                                 for m in figures["models"]))
    bos += " (as each model's tokenizer)" if s["add_bos"] is None else ""
    out += ["", f"KoBEST split `{s['kobest_split']}`, at most {limit} items per task, few-shot seed "
            f"{s['seed']}, BOS {bos}, {s['device']}, {figures['seconds']:.1f} s.", ""]

    summary = _summary(figures)
    if summary:
        out += ["## Summary", "", "Bits per byte: lower is better. KoBEST: higher is better. Tokens per "
                "document (per sentence for a text set of one sentence per line): each model's tokenizer "
                "on the documents scored for bits per byte.", ""]
        out += summary + [""]

    kobest = figures.get("kobest", {})
    if kobest:
        out += ["## KoBEST (f1, macro-averaged), as in the Llama-2-Ko card", ""]
    for task, per_shots in kobest.items():
        shots = list(per_shots)
        n_items = next(iter(next(iter(per_shots.values())).values()))["n"]
        out += [f"### {task} ({n_items} items)", ""]
        rows = [[n, *(_fmt(per_shots[k][n]["f1"]) for k in shots)] for n in names]
        rows += [[d, *(_delta(per_shots[k][n]["f1"], per_shots[k][base]["f1"]) for k in shots)]
                 for d, n in zip(deltas, names[1:], strict=True)]
        out += _table(["model", *(f"{k}-shot" for k in shots)], rows) + [""]

    bpb = figures.get("bpb", {})
    if bpb:
        out += ["## Bits per byte", ""]
        rows = []
        for text, per_model in bpb.items():
            for n in names:
                r = per_model[n]
                rows.append([text, n, str(r["documents"]), str(r["bytes"]), str(r["tokens"]),
                             _fmt(r["bits_per_token"]), _fmt(r["bits_per_byte"])])
        out += _table(["text", "model", "documents", "bytes", "tokens", "bits/token", "bits/byte"], rows, 2)
        out += [""]
    out += ["## Relation to lm-evaluation-harness", "", HARNESS_NOTES]
    return "\n".join(out)
