"""`kovocab shard` on bad and unusual inputs: each is a clear error or a counted quarantine.

Real Korean text from ../shared/data (NSMC reviews, KoCoNovel) is re-encoded,
compressed, truncated or corrupted under tmp_path; nothing else may be lost:
docs in = kept + dropped + duplicates for every run.
"""

from __future__ import annotations

import base64
import bz2
import gzip
import json
import lzma
import re
from pathlib import Path

import pytest
import zstandard
from conftest import DATA

from kovocab.cli import main
from kovocab.corpus import iter_shard_texts

NSMC = DATA / "nsmc" / "nsmc_raw_reviews.tsv.xz"
NOVEL = DATA / "koconovel" / "text" / "10_Rich_Mine.text.jsonl"


def nsmc_reviews(n: int) -> list[str]:
    """The first n non-empty, distinct NSMC reviews (Korean, single line)."""
    out: list[str] = []
    with lzma.open(NSMC, "rt", encoding="utf-8") as f:
        next(f)
        for line in f:
            review = line.rstrip("\n").split("\t")[4].strip()
            if len(review) >= 10 and " " in review and review not in out and "  " not in review:
                out.append(review)
                if len(out) == n:
                    return out
    return out


@pytest.fixture(scope="module")
def reviews() -> list[str]:
    return nsmc_reviews(40)


def run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = main(["shard", "-q", *args])
    return code, capsys.readouterr().err


def manifest(out: Path) -> dict:
    return json.loads((out / "manifest.json").read_text())


def quarantine(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "quarantine.jsonl").read_text().splitlines()]


def balanced(m: dict) -> bool:
    s = m["stats"]
    return s["docs_in"] == s["kept"] + s["dropped"] + s["duplicates"]


def kept_texts(out: Path) -> list[str]:
    return sorted([*iter_shard_texts(out, "train"), *iter_shard_texts(out, "eval")])


def test_invalid_utf8_line_is_quarantined_with_its_bytes(tmp_path, reviews, capsys) -> None:
    bad = reviews[1].encode("utf-8")[:-1] + b"\xff\xfe tail"
    data = b"\n".join([reviews[0].encode(), bad, reviews[2].encode()]) + b"\n"
    (tmp_path / "in.txt").write_bytes(data)
    code, err = run([str(tmp_path / "in.txt"), "--out", str(tmp_path / "out")], capsys)
    assert code == 0, err
    m = manifest(tmp_path / "out")
    assert m["inputs"][0]["encoding"] == "utf-8"
    assert m["stats"]["dropped_by_reason"] == {"invalid-encoding": 1} and balanced(m)
    (entry,) = quarantine(tmp_path / "out")
    assert entry["line"] == 2 and entry["record"] == 1 and entry["reason"] == "invalid-encoding"
    assert base64.b64decode(entry["raw_base64"]) == bad
    assert "\\xff" in entry["raw_escaped"] and entry["path"].endswith("in.txt")
    assert kept_texts(tmp_path / "out") == sorted([reviews[0], reviews[2]])


@pytest.mark.parametrize("encoding", ["auto", "cp949", "euc-kr"])
def test_cp949_file_is_detected_or_named_and_decoded(tmp_path, reviews, capsys, encoding) -> None:
    texts = [r for r in reviews if r.encode("euc-kr", errors="ignore").decode("euc-kr") == r][:20]
    path = tmp_path / "legacy.txt"
    path.write_bytes(("\n".join(texts) + "\n").encode("cp949"))
    code, err = run([str(path), "--encoding", encoding, "--out", str(tmp_path / "out")], capsys)
    assert code == 0, err
    m = manifest(tmp_path / "out")
    assert m["inputs"][0]["encoding"] == ("cp949" if encoding == "auto" else encoding)
    assert kept_texts(tmp_path / "out") == sorted(texts)


def test_nul_bytes_are_quarantined(tmp_path, reviews, capsys) -> None:
    path = tmp_path / "nul.txt"
    path.write_bytes(f"{reviews[0]}\n{reviews[1][:5]}\x00\x00{reviews[1][5:]}\n{reviews[2]}\n".encode())
    code, err = run([str(path), "--out", str(tmp_path / "out")], capsys)
    assert code == 0, err
    m = manifest(tmp_path / "out")
    assert m["stats"]["dropped_by_reason"] == {"nul-byte": 1} and balanced(m)
    assert [q["line"] for q in quarantine(tmp_path / "out")] == [2]


def test_empty_file_alone_is_an_error_and_among_others_is_counted(tmp_path, reviews, capsys) -> None:
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")
    code, err = run([str(empty), "--out", str(tmp_path / "a")], capsys)
    assert code == 1 and "kovocab: error:" in err and "every input is empty" in err and "empty.txt" in err
    # Compressed to nothing is empty too.
    (tmp_path / "empty.txt.gz").write_bytes(gzip.compress(b""))
    (tmp_path / "real.txt").write_text("\n".join(reviews[:5]) + "\n", encoding="utf-8")
    code, err = run(
        [str(tmp_path / "empty.txt.gz"), str(tmp_path / "real.txt"), "--out", str(tmp_path / "b")], capsys
    )
    assert code == 0, err
    m = manifest(tmp_path / "b")
    assert [i["empty"] for i in m["inputs"]] == [True, False] and m["stats"]["kept"] == 5


def test_10mb_line_is_quarantined_without_the_rest_lost(tmp_path, reviews, capsys) -> None:
    path = tmp_path / "long.txt"
    big = ("가나다라마바사" * 500_000).encode()  # 10.5 MB, one line
    path.write_bytes(reviews[0].encode() + b"\n" + big + b"\n" + reviews[1].encode() + b"\n")
    code, err = run([str(path), "--out", str(tmp_path / "out")], capsys)
    assert code == 0, err
    m = manifest(tmp_path / "out")
    assert m["stats"]["dropped_by_reason"] == {"record-too-large": 1} and balanced(m)
    (entry,) = quarantine(tmp_path / "out")
    assert entry["bytes"] == len(big) and entry["truncated"] and entry["line"] == 2
    assert len(base64.b64decode(entry["raw_base64"])) == 4096
    assert kept_texts(tmp_path / "out") == sorted(reviews[:2])


@pytest.mark.parametrize("kind", ["gzip", "xz", "zstd"])
def test_truncated_compressed_file_is_an_error(tmp_path, reviews, capsys, kind) -> None:
    data = ("\n".join(reviews * 50) + "\n").encode()
    packed = {"gzip": gzip.compress, "xz": lzma.compress, "zstd": zstandard.ZstdCompressor().compress}[kind](
        data
    )
    path = tmp_path / "cut.txt"  # no suffix: the magic bytes tell
    path.write_bytes(packed[: len(packed) // 2])
    code, err = run([str(path), "--out", str(tmp_path / "out")], capsys)
    assert code == 1 and "kovocab: error:" in err
    assert "cut.txt" in err and "truncated" in err and "re-create or re-download" in err


def test_compressed_inputs_read_the_same(tmp_path, reviews, capsys) -> None:
    data = ("\n".join(reviews) + "\n").encode()
    for name, pack in [
        ("a.txt.gz", gzip.compress),
        ("b.txt.xz", lzma.compress),
        ("c.txt.bz2", bz2.compress),
        ("d.txt.zst", zstandard.ZstdCompressor().compress),
    ]:
        (tmp_path / "in" / name).parent.mkdir(exist_ok=True)
        (tmp_path / "in" / name).write_bytes(pack(data))
    code, err = run([str(tmp_path / "in"), "--out", str(tmp_path / "out")], capsys)
    assert code == 0, err
    m = manifest(tmp_path / "out")
    assert [i["compression"] for i in m["inputs"]] == ["gzip", "xz", "bz2", "zstd"]
    assert m["stats"]["kept"] == len(reviews) and m["stats"]["duplicates"] == 3 * len(reviews)


def test_missing_path_is_an_error(tmp_path, capsys) -> None:
    code, err = run([str(tmp_path / "nope.txt"), "--out", str(tmp_path / "out")], capsys)
    assert code == 1 and "no such file or folder" in err and "nope.txt" in err
    code, err = run([str(tmp_path / "*.jsonl"), "--out", str(tmp_path / "out")], capsys)
    assert code == 1 and "matches no files" in err


def test_wrong_column_and_field_are_errors_with_suggestions(tmp_path, capsys) -> None:
    code, err = run([str(NSMC), "--field", "reviw", "--out", str(tmp_path / "a")], capsys)
    assert code == 1 and "column 'reviw' is not in the header" in err and "did you mean 'review'" in err
    code, err = run([str(NOVEL), "--field", "txt", "--out", str(tmp_path / "b")], capsys)
    assert code == 1 and "no field 'txt'" in err and "did you mean 'text'" in err
    assert not (tmp_path / "a").exists()  # checked before anything is written


def test_config_typo_is_an_error_with_suggestion(tmp_path, capsys) -> None:
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"shard:\n  sources: [{{name: n, paths: [{NOVEL}]}}]\n  shardz: 3\n  min_chars: many\n")
    code, err = run(["--recipe", str(recipe), "--out", str(tmp_path / "out")], capsys)
    assert code == 1 and "2 config problems" in err  # all reported at once
    assert "shard.shardz: unknown key; did you mean 'shards'?" in err
    assert "shard.min_chars: expected an integer, got 'many'" in err
    recipe.write_text(f"shard:\n  sources: [{{name: n, paths: [{NOVEL}]}}]\n  min_hangul_ratio: 2\n")
    code, err = run(["--recipe", str(recipe), "--out", str(tmp_path / "out")], capsys)
    assert code == 1 and "shard.min_hangul_ratio: must be between 0 and 1, got 2.0" in err


def test_utf16_file_and_foreign_output_folder_are_errors(tmp_path, reviews, capsys) -> None:
    path = tmp_path / "u16.txt"
    path.write_bytes("\n".join(reviews).encode("utf-16"))
    code, err = run([str(path), "--out", str(tmp_path / "out")], capsys)
    assert code == 1 and "UTF-16" in err and "iconv" in err
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    code, err = run([str(NOVEL), "--out", str(tmp_path / "mine")], capsys)
    assert code == 1 and "notes.txt" in err and (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


def test_bad_json_lines_and_non_text_values_are_quarantined(tmp_path, reviews, capsys) -> None:
    path = tmp_path / "docs.jsonl"
    lines = [
        json.dumps({"text": reviews[0]}, ensure_ascii=False),
        "{not json",
        json.dumps({"text": 7}),
        json.dumps({"body": reviews[1]}, ensure_ascii=False),
        "",
        json.dumps({"text": reviews[2]}, ensure_ascii=False),
    ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    # 3 of 5 quarantined is "most of the input": accepted only when asked.
    allow = ["--set", "shard.allow_low_yield=true"]
    code, err = run([str(path), "--out", str(tmp_path / "out"), *allow], capsys)
    assert code == 0, err
    m = manifest(tmp_path / "out")
    assert m["stats"]["dropped_by_reason"] == {"bad-json": 1, "missing-field": 1, "not-text": 1}
    assert m["stats"]["docs_in"] == 5 and balanced(m)  # the blank line is no record
    assert [q["line"] for q in quarantine(tmp_path / "out")] == [2, 3, 4]


def test_other_formats_json_array_csv_paragraphs_and_tsv_without_header(tmp_path, reviews, capsys) -> None:
    (tmp_path / "a.json").write_text(
        json.dumps([{"q": {"text": r}} for r in reviews[:4]], ensure_ascii=False)
    )
    code, err = run([str(tmp_path / "a.json"), "--field", "q.text", "--out", str(tmp_path / "o1")], capsys)
    assert code == 0, err
    assert kept_texts(tmp_path / "o1") == sorted(reviews[:4])

    quoted = 'id,text\n1,"' + reviews[0] + '"\n2,"' + reviews[1] + ', with a comma\nand a newline"\n'
    (tmp_path / "b.csv").write_text(quoted, encoding="utf-8")
    code, err = run([str(tmp_path / "b.csv"), "--out", str(tmp_path / "o2")], capsys)
    assert code == 0, err
    assert kept_texts(tmp_path / "o2") == sorted([reviews[0], reviews[1] + ", with a comma\nand a newline"])

    (tmp_path / "c.txt").write_text(f"{reviews[0]}\n{reviews[1]}\n\n\n{reviews[2]}\n", encoding="utf-8")
    code, err = run(
        [str(tmp_path / "c.txt"), "--txt-mode", "paragraph", "--out", str(tmp_path / "o3")], capsys
    )
    assert code == 0, err
    assert kept_texts(tmp_path / "o3") == sorted([f"{reviews[0]}\n{reviews[1]}", reviews[2]])

    (tmp_path / "d.tsv").write_text(
        "".join(f"{i}\t{r}\n" for i, r in enumerate(reviews[:3])), encoding="utf-8"
    )
    recipe = tmp_path / "r.yaml"
    recipe.write_text("shard:\n  sources: [{name: t, paths: [d.tsv], header: false, field: '1'}]\n")
    code, err = run(["--recipe", str(recipe), "--out", str(tmp_path / "o4")], capsys)
    assert code == 0, err
    assert kept_texts(tmp_path / "o4") == sorted(reviews[:3])


def test_tsv_short_rows_are_quarantined_and_crlf_is_read(tmp_path, reviews, capsys) -> None:
    rows = ["id\tdate\treview", f"1\t2015\t{reviews[0]}", "2\t2015", f"3\t2015\t{reviews[1]}", ""]
    (tmp_path / "r.tsv").write_bytes("\r\n".join(rows).encode())
    code, err = run([str(tmp_path / "r.tsv"), "--field", "review", "--out", str(tmp_path / "out")], capsys)
    assert code == 0, err
    m = manifest(tmp_path / "out")
    assert m["stats"]["dropped_by_reason"] == {"bad-row": 1} and m["stats"]["docs_in"] == 3
    assert [q["line"] for q in quarantine(tmp_path / "out")] == [3]
    assert kept_texts(tmp_path / "out") == sorted(reviews[:2])


def test_parquet_is_read_through_datasets(tmp_path, reviews, capsys) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"review": reviews[:6], "n": list(range(6))}), tmp_path / "r.parquet")
    code, err = run(
        [str(tmp_path / "r.parquet"), "--field", "review", "--out", str(tmp_path / "out")], capsys
    )
    assert code == 0, err
    assert kept_texts(tmp_path / "out") == sorted(reviews[:6])


def test_wrong_encoding_quarantining_everything_fails_unless_allowed(tmp_path, capsys, caplog) -> None:
    texts = nsmc_reviews(200)
    (tmp_path / "utf8.txt").write_text("\n".join(texts) + "\n", encoding="utf-8")
    args = [str(tmp_path / "utf8.txt"), "--encoding", "cp949", "--out", str(tmp_path / "out")]
    code, err = run(args, capsys)
    # One review happens to decode as CP949 (into non-Hangul text the filters drop); the rest cannot.
    assert code == 1 and "kovocab: error: shard: no document of 200 was kept and 199 of 200 records were " \
        "quarantined (dropped by reason: invalid-encoding: 199, low-hangul: 1" in err, err
    assert "shard.allow_low_yield=true" in err
    assert not (tmp_path / "out" / "manifest.json").exists() and not list((tmp_path / "out").glob("train-*"))
    code, err = run([*args, "--set", "shard.allow_low_yield=true"], capsys)
    assert code == 0, err
    m = manifest(tmp_path / "out")
    assert m["stats"]["kept"] == 0 and m["stats"]["quarantined"] == 199 and balanced(m)
    assert "allowed by allow_low_yield" in caplog.text


def test_no_document_kept_by_the_filters_fails_unless_allowed(tmp_path, capsys) -> None:
    (tmp_path / "en.txt").write_text("An English line.\nAnother English line.\n", encoding="utf-8")
    code, err = run([str(tmp_path / "en.txt"), "--out", str(tmp_path / "out")], capsys)
    assert code == 1 and "no document of 2 was kept" in err and "low-hangul" in err, err
    # Nothing was quarantined, so the message does not send the user to empty quarantine files.
    assert "quarantine.jsonl" not in err and "against a few lines of the file" in err, err


def test_cp949_past_the_sniffed_sample_is_warned_about(tmp_path, capsys, caplog) -> None:
    texts = nsmc_reviews(1200)
    head = ("\n".join(texts[:1100]) + "\n").encode("utf-8")
    assert len(head) > 65536  # the sniffed sample is all UTF-8
    tail = [t for t in texts[1100:] if t.encode("euc-kr", errors="ignore").decode("euc-kr") == t][:20]
    path = tmp_path / "mixed.txt"
    path.write_bytes(head + ("\n".join(tail) + "\n").encode("cp949"))
    code, err = run([str(path), "--out", str(tmp_path / "out")], capsys)
    assert code == 0, err
    assert manifest(tmp_path / "out")["inputs"][0]["encoding"] == "utf-8"
    assert f"{len(tail)} line(s) past the first 64 KiB are not UTF-8 but decode as CP949" in caplog.text
    assert "encoding: cp949" in caplog.text
    assert all(q["detail"].endswith("the line decodes as CP949") for q in quarantine(tmp_path / "out"))


def test_skipped_folder_files_are_logged_and_counted(tmp_path, reviews, capsys, caplog) -> None:
    folder = tmp_path / "in"
    (folder / ".git").mkdir(parents=True)
    (folder / "a.txt").write_text("\n".join(reviews[:10]) + "\n", encoding="utf-8")
    (folder / "README").write_text("about this corpus\n")
    (folder / "logo.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    (folder / ".hidden.txt").write_text(reviews[10] + "\n", encoding="utf-8")
    (folder / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    code, err = run([str(folder), "--out", str(tmp_path / "out")], capsys)
    assert code == 0, err
    m = manifest(tmp_path / "out")
    assert m["stats"]["skipped_files"] == 4
    assert m["stats"]["skipped_by_reason"] == {"hidden": 2, "unknown format": 2}
    names = sorted(Path(e["path"]).name for e in m["skipped_files"])
    assert names == [".hidden.txt", "HEAD", "README", "logo.png"]
    assert "skipped 4 file(s) in the input folders (2 hidden, 2 unknown format)" in caplog.text
    assert m["stats"]["kept"] == 10


def test_zero_byte_xz_is_called_empty_not_unknown(tmp_path, reviews, capsys) -> None:
    (tmp_path / "x.txt.xz").write_bytes(b"")
    code, err = run([str(tmp_path / "x.txt.xz"), "--out", str(tmp_path / "out")], capsys)
    assert code == 1 and "x.txt.xz: the file is empty (0 bytes), so it is not valid xz data" in err, err
    assert "cannot tell the format" not in err
    (tmp_path / "y.txt.gz").write_text(reviews[0] + "\n", encoding="utf-8")  # not compressed at all
    code, err = run([str(tmp_path / "y.txt.gz"), "--out", str(tmp_path / "out")], capsys)
    assert code == 1 and "y.txt.gz: named .gz but it does not start like gzip data" in err, err


def test_truncated_gzip_says_how_much_was_read(tmp_path, capsys) -> None:
    data = ("\n".join(nsmc_reviews(2000)) + "\n").encode()
    packed = gzip.compress(data)
    path = tmp_path / "cut.txt.gz"
    path.write_bytes(packed[: len(packed) // 2])
    code, err = run([str(path), "--out", str(tmp_path / "out")], capsys)
    assert code == 1
    m = re.search(r"truncated or corrupt: (\d+) bytes decompressed, then it stopped at byte (\d+) of (\d+)",
                  err)
    assert m, err
    assert 0 < int(m.group(1)) < len(data) and int(m.group(2)) == int(m.group(3)) == len(packed) // 2


@pytest.mark.parametrize("workers", ["0", "-2"])
def test_workers_below_one_is_a_config_error(tmp_path, reviews, capsys, workers) -> None:
    (tmp_path / "a.txt").write_text("\n".join(reviews[:5]) + "\n", encoding="utf-8")
    code, err = run([str(tmp_path / "a.txt"), "--out", str(tmp_path / "out"), "--workers", workers], capsys)
    assert code == 1
    assert f"kovocab: error: --workers: must be at least 1 (processes for phase 1), got {workers}" in err
