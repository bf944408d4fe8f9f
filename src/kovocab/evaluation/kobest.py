"""KoBEST (BoolQ, COPA, HellaSwag, SentiNeg, WiC) from the original TSVs, as lm-evaluation-harness asks it.

Prompts, choices, targets and metrics follow EleutherAI/lm-evaluation-harness
lm_eval/tasks/kobest/kobest_{boolq,copa,hellaswag,sentineg,wic}.yaml and utils.py; the TSV
columns map to the fields of HF `skt/kobest_v1` as its loading script (kobest_v1.py) does.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kovocab.errors import InputError

TASKS = ("boolq", "copa", "hellaswag", "sentineg", "wic")
FOLDERS = {"boolq": "BoolQ", "copa": "COPA", "hellaswag": "HellaSwag", "sentineg": "SentiNeg", "wic": "WiC"}
# the harness's defaults for multiple_choice tasks (lm_eval/api/task.py TaskConfig)
TARGET_DELIMITER = " "
FEWSHOT_DELIMITER = "\n\n"
FEWSHOT_SEED = 1234  # lm_eval's --fewshot_seed default
ACC_NORM_TASKS = frozenset({"hellaswag"})  # the only kobest_*.yaml listing acc_norm


@dataclass(frozen=True)
class Doc:
    """One KoBEST item: the harness's doc_to_text, doc_to_choice and gold index."""

    text: str
    choices: tuple[str, ...]
    gold: int

    @property
    def target(self) -> str:
        """What a few-shot example shows after the target delimiter: the gold choice."""
        return self.choices[self.gold]


def _yes_no(value: str, where: str) -> int:
    # kobest_v1.py maps str(s) == 'False' -> 0 else 1 after pandas parsed TRUE/True as bool
    v = value.strip().lower()
    if v not in ("true", "false"):
        raise InputError(f"{where}: expected True or False, got {value!r}")
    return int(v == "true")


def _int(value: str, where: str, lo: int, hi: int) -> int:
    try:
        n = int(value.strip())
    except ValueError:
        n = lo - 1
    if not lo <= n <= hi:
        raise InputError(f"{where}: expected an integer label {lo}..{hi}, got {value!r}")
    return n


def _boolq(r: dict[str, str], where: str) -> Doc:
    return Doc(f"{r['Text']} 질문: {r['Question']} 답변: ", ("아니오", "예"), _yes_no(r["Answer"], where))


def _copa(r: dict[str, str], where: str) -> Doc:
    connectors = {"원인": " 왜냐하면", "결과": " 그래서"}
    question = r["question"].strip()
    if question not in connectors:
        raise InputError(f"{where}: question must be 원인 or 결과, got {r['question']!r}")
    # premise + " " + " 왜냐하면": the double space is the harness's (utils.copa_doc_to_text)
    gold = _int(r["Answer"], where, 1, 2) - 1
    return Doc(f"{r['sentence']} {connectors[question]}", (r["1"], r["2"]), gold)


def _hellaswag(r: dict[str, str], where: str) -> Doc:
    endings = tuple(r[f"choice{i}"] for i in range(1, 5))
    return Doc(f"문장: {r['context']}", endings, _int(r["label"], where, 0, 3))


def _sentineg(r: dict[str, str], where: str) -> Doc:
    # test.tsv also holds Text_origin/Label_origin (HF's `test_originated` split); `test` is Text/Label
    return Doc(f"문장: {r['Text']} 긍부정:", ("부정", "긍정"), _int(r["Label"], where, 0, 1))


def _wic(r: dict[str, str], where: str) -> Doc:
    text = f"문장1: {r['SENTENCE1']} 문장2: {r['SENTENCE2']} 두 문장에서 {r['Target']}가 같은 뜻으로 쓰였나?"
    return Doc(text, ("아니오", "예"), _yes_no(r["ANSWER"], where))


_BUILDERS: dict[str, Callable[[dict[str, str], str], Doc]] = {
    "boolq": _boolq, "copa": _copa, "hellaswag": _hellaswag, "sentineg": _sentineg, "wic": _wic,
}
COLUMNS = {
    "boolq": ("Text", "Question", "Answer"),
    "copa": ("sentence", "question", "1", "2", "Answer"),
    "hellaswag": ("context", "choice1", "choice2", "choice3", "choice4", "label"),
    "sentineg": ("Text", "Label"),
    "wic": ("Target", "SENTENCE1", "SENTENCE2", "ANSWER"),
}


def task_file(kobest_dir: Path, task: str, split: str) -> Path:
    return Path(kobest_dir) / FOLDERS[task] / f"{split}.tsv"


def load_docs(kobest_dir: Path, task: str, split: str) -> list[Doc]:
    """The items of one split in file order, read as HF's kobest_v1 script reads them.

    pandas (a dependency of `datasets`) with the script's defaults: tab-separated, quotes
    honoured, and rows with any empty or NA-looking cell dropped (`df.dropna()`).
    """
    import pandas as pd

    path = task_file(kobest_dir, task, split)
    if not path.is_file():
        raise InputError(f"eval.kobest_dir: {path} not found; point kobest_dir at the folder holding "
                         f"{'/'.join(FOLDERS.values())} (e.g. ../shared/data/kobest)")
    try:
        df = pd.read_csv(path, sep="\t", dtype=str).dropna()
    except (ValueError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: not a readable KoBEST TSV: {exc}") from exc
    missing = [c for c in COLUMNS[task] if c not in df.columns]
    if missing:
        raise InputError(f"{path}: missing column(s) {', '.join(missing)} (header: {', '.join(df.columns)})")
    build = _BUILDERS[task]
    rows = zip(df.index, df.to_dict("records"), strict=True)
    return [build(row, f"{path}, row {n + 2}") for n, row in rows]


def fewshot_contexts(
    docs: Sequence[Doc], pool: Sequence[Doc], shots: int, seed: int, same_split: bool = False
) -> list[str]:
    """The prompt of every doc: `shots` examples from `pool`, then the doc's own text.

    As the harness's ContextSampler: one random.Random(seed) per (task, shots) run, drawing
    rnd.sample(pool, shots) for each doc in order, so the same seed gives the harness's
    examples. An example equal to the doc is dropped; when `pool` is the evaluated split
    itself (`same_split`) one extra is drawn for that, as the harness does.
    """
    draw = shots + 1 if same_split and shots else shots
    if len(pool) < draw:
        raise InputError(f"eval.shots: {shots} examples asked but the few-shot split has {len(pool)}")
    rnd = random.Random(seed)
    population = list(pool)
    out = []
    for doc in docs:
        examples = [ex for ex in rnd.sample(population, draw) if ex != doc][:shots] if shots else []
        shown = "".join(ex.text + TARGET_DELIMITER + ex.target + FEWSHOT_DELIMITER for ex in examples)
        out.append(shown + doc.text)
    return out


def macro_f1(golds: Sequence[int], preds: Sequence[int]) -> float:
    """sklearn's f1_score(average="macro"): mean F1 over labels seen in golds or preds."""
    labels = sorted(set(golds) | set(preds))
    if not labels:
        return float("nan")
    scores = []
    for c in labels:
        tp = sum(g == c and p == c for g, p in zip(golds, preds, strict=True))
        fp = sum(g != c and p == c for g, p in zip(golds, preds, strict=True))
        fn = sum(g == c and p != c for g, p in zip(golds, preds, strict=True))
        scores.append(2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0)
    return sum(scores) / len(scores)


def task_metrics(docs: Sequence[Doc], lls: Sequence[Sequence[float]], task: str) -> dict[str, Any]:
    """The metrics of lm_eval/tasks/kobest/kobest_{task}.yaml under the harness's names.

    acc with its stderr and `f1` (the yaml's f1 with aggregation utils.macro_f1_score,
    average: macro); HellaSwag alone also has acc_norm (log-likelihood per character of
    the choice) and its stderr. The harness gives f1 no stderr (a custom aggregation).
    """
    golds = [d.gold for d in docs]
    preds = [_argmax(ll) for ll in lls]
    out: dict[str, Any] = {**_mean_and_stderr("acc", [p == g for p, g in zip(preds, golds, strict=True)]),
                           "f1": macro_f1(golds, preds), "n": len(docs)}
    if task in ACC_NORM_TASKS:
        # acc_norm divides by the choice's length in characters, as the harness does
        norm = [_argmax([x / len(c) for x, c in zip(ll, d.choices, strict=True)])
                for ll, d in zip(lls, docs, strict=True)]
        out.update(_mean_and_stderr("acc_norm", [p == g for p, g in zip(norm, golds, strict=True)]))
    return out


def _mean_and_stderr(name: str, hits: Sequence[bool]) -> dict[str, float | None]:
    import math

    n = len(hits)
    mean = sum(hits) / n
    # the harness's mean_stderr: sample standard deviation (n - 1) over sqrt(n)
    stderr = math.sqrt(mean * (1 - mean) * n / (n - 1) / n) if n > 1 else None  # JSON has no NaN
    return {name: mean, f"{name}_stderr": stderr}


def _argmax(values: Sequence[float]) -> int:
    """The first index of the largest value, as numpy.argmax."""
    return max(range(len(values)), key=values.__getitem__)
