"""Render the report's figures (the content of report.json): Markdown, one HTML file, a text table.

The HTML is self-contained and readable offline: inline CSS and inline SVG charts
drawn here (characters per token; distribution of tokens per sentence; with an
expand_vocab sweep, Korean tokens per sentence against the number of new pieces), no scripts,
no fonts or images fetched from anywhere.
"""

from __future__ import annotations

from html import escape
from typing import Any

PALETTE = ("#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#ff9da7",
           "#9c755f", "#bab0ac")
# Tokenizers that agree (Llama-2 as .model and as tokenizer.json) draw identical lines;
# dashes let the one underneath show through.
DASHES = ("", "7 4", "2 3", "10 3 2 3")
BUCKET_ORDER = ("all", "korean", "english", "mixed")
COLUMNS = (  # (metric key, header, format)
    ("lines", "lines", "{:,}"),
    ("tokens_per_sentence_mean", "tok/sent mean", "{:.1f}"),
    ("tokens_per_sentence_median", "median", "{:.0f}"),
    ("tokens_per_sentence_p95", "p95", "{:.0f}"),
    ("chars_per_token", "chars/tok", "{:.2f}"),
    ("bytes_per_token", "bytes/tok", "{:.2f}"),
    ("fertility", "fertility", "{:.2f}"),
    ("multi_token_word_share", "multi-token words", "{:.1%}"),
    ("byte_fallback_share", "byte tokens", "{:.1%}"),
    ("unk_share", "unk", "{:.2%}"),
    ("roundtrip_rate", "round-trip", "{:.1%}"),
    ("tokens_vs_base", "tokens vs base", "{:.0%}"),
    ("encode_mb_per_s", "encode MB/s", "{:.2f}"),
)


def _rows(fig: dict[str, Any], text_name: str) -> list[tuple[str, str, dict[str, Any]]]:
    """(tokenizer, bucket, metrics) for one text set: 'all' rows first, then each script bucket."""
    toks = fig["order"]["tokenizers"]
    return [(t, b, fig["results"][t][text_name][b])
            for b in BUCKET_ORDER for t in toks if b in fig["results"][t][text_name]]


def _cell(m: dict[str, Any], key: str, fmt: str) -> str:
    return fmt.format(m[key]) if key in m else ""


def english_verdict(e: dict[str, Any]) -> str:
    """'yes', 'no', or 'no English lines' (then there was nothing to compare, which is no failure)."""
    return "yes" if e["identical"] else ("no English lines" if not e["lines"] else "no")


SWEEP_COLUMNS = (  # (row key, header, format)
    ("new_pieces", "new pieces", "{:,}"),
    ("vocab_size", "vocab", "{:,}"),
    ("korean_tokens_per_sentence", "Korean tok/sent", "{:.2f}"),
    ("korean_chars_per_token", "chars/tok", "{:.3f}"),
    ("golden_tokens", "golden sentence", "{}"),
    ("replaced_unreachable", "unreachable replaced", "{:,}"),
    ("pieces_prefix_of_largest", "prefix of largest", "{}"),
)


def _sweep_cells(row: dict[str, Any]) -> list[str]:
    return ["" if row.get(k) is None else f.format(row[k]) for k, _, f in SWEEP_COLUMNS]


def _sweep_note(rows: list[dict[str, Any]]) -> str:
    base = rows[0].get("base_tokens_per_sentence")
    n = rows[0].get("held_out_sentences", 0)
    before = f" (base: {base:.2f})" if base is not None else ""
    return (f"One Korean model cut at each size; held-out Korean tokens per sentence{before} "
            f"on {n:,} sentences.")


def _code(text: str) -> str:
    text = text.replace("|", "\\|")
    return f"`` {text} ``" if "`" in text else f"`{text}`"


def render_markdown(fig: dict[str, Any]) -> str:
    base, toks, sets = fig["base"], fig["order"]["tokenizers"], fig["order"]["texts"]
    out = ["# Tokenization efficiency", "",
           f"Base tokenizer: `{base}`. Token counts exclude BOS/EOS. Definitions at the end.", "",
           "## Tokenizers", "", "| name | kind | vocab | file |", "|---|---|---:|---|"]
    for name in toks:
        t = fig["tokenizers"][name]
        out.append(f"| {name} | {t['kind']} | {t['vocab_size']:,} | `{t['file']}` |")
    out += ["", "## Text sets", "", "| name | lines | korean | english | mixed | path |",
            "|---|---:|---:|---:|---:|---|"]
    for name in sets:
        t = fig["texts"][name]
        b = t["buckets"]
        out.append(f"| {name} | {t['lines']:,} | {b['korean']:,} | {b['english']:,} | {b['mixed']:,} "
                   f"| `{t['path']}` |")
    for text_name in sets:
        out += ["", f"## {text_name}", "",
                "| tokenizer | bucket | " + " | ".join(h for _, h, _ in COLUMNS) + " |",
                "|---|---|" + "---:|" * len(COLUMNS)]
        for tok, bucket, m in _rows(fig, text_name):
            out.append(f"| {tok} | {bucket} | " + " | ".join(_cell(m, k, f) for k, _, f in COLUMNS) + " |")
    out += ["", f"## English lines: ids identical to `{base}`?", "",
            "| tokenizer | English lines | identical | all identical |", "|---|---:|---:|---|"]
    for tok in toks:
        e = fig["english_vs_base"][tok]
        verdict = "**no**" if english_verdict(e) == "no" else english_verdict(e)
        out.append(f"| {tok} | {e['lines']:,} | {e['identical_lines']:,} | {verdict} |")
    if fig.get("sweep"):
        rows = fig["sweep"]
        out += ["", "## Size sweep", "", _sweep_note(rows), "",
                "| " + " | ".join(h for _, h, _ in SWEEP_COLUMNS) + " |",
                "|" + "---:|" * len(SWEEP_COLUMNS)]
        out += ["| " + " | ".join(_sweep_cells(r)) + " |" for r in rows]
    out += ["", "## Examples"]
    for ex in fig["examples"]:
        out += ["", _code(ex["text"]), "", "| tokenizer | tokens | vs base | pieces |", "|---|---:|---:|---|"]
        for tok in toks:
            row = ex["tokenizers"][tok]
            pieces = _code(" ".join(row["pieces"]))
            out.append(f"| {tok} | {row['count']} | {row['change_vs_base']:+d} | {pieces} |")
    out += ["", "## Definitions", ""]
    out += [f"- `{k}`: {v}" for k, v in fig["metrics"].items()]
    return "\n".join(out) + "\n"


CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI","Noto Sans KR","Malgun Gothic",sans-serif;
margin:24px auto;max-width:1100px;color:#222;padding:0 16px}
h1{font-size:1.6em}h2{margin-top:1.8em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:8px 0;font-size:13px}
th,td{border:1px solid #ddd;padding:3px 7px}th{background:#f4f4f4}td:first-child{white-space:nowrap}
td.n{text-align:right;font-variant-numeric:tabular-nums}tr.all td{font-weight:600}
.tok{display:inline-block;margin:1px;padding:0 3px;border-radius:3px;font-family:monospace;
font-size:13px;white-space:pre}
.c0{background:#dbeafe}.c1{background:#fde68a}.c2{background:#d1fae5}.c3{background:#fecaca}
.sp{display:inline-block;width:.55em;height:.35em;border:1px solid #666;border-top:0;margin:0 1px}
.sw{display:inline-block;width:10px;height:10px;margin-right:4px}
code{background:#f4f4f4;padding:1px 4px}svg text{font-family:inherit}
"""


def _color(i: int) -> str:
    return PALETTE[i % len(PALETTE)]


def bar_chart(fig: dict[str, Any]) -> str:
    """Characters per token, one group of bars per text set, one bar per tokenizer."""
    toks, sets = fig["order"]["tokenizers"], fig["order"]["texts"]
    values = {(t, s): fig["results"][t][s]["all"]["chars_per_token"] for t in toks for s in sets}
    top = max(values.values()) or 1.0
    left, bar_w, bar_h, head = 170, 500, 16, 22
    height = 10 + len(sets) * (head + len(toks) * (bar_h + 4) + 8)
    parts = [f'<svg viewBox="0 0 760 {height}" width="760" height="{height}" role="img">',
             "<title>characters per token</title>"]
    y = 10
    for s in sets:
        parts.append(f'<text x="0" y="{y + 14}" font-weight="600" font-size="14">{escape(s)}</text>')
        y += head
        for i, t in enumerate(toks):
            v = values[(t, s)]
            w = max(1.0, bar_w * v / top)
            parts += [
                f'<text x="{left - 8}" y="{y + 12}" text-anchor="end" font-size="12">{escape(t)}</text>',
                f'<rect x="{left}" y="{y}" width="{w:.1f}" height="{bar_h}" fill="{_color(i)}"/>',
                f'<text x="{left + w + 6:.1f}" y="{y + 12}" font-size="12">{v:.2f}</text>',
            ]
            y += bar_h + 4
        y += 8
    parts.append("</svg>")
    return "".join(parts)


def histogram_chart(fig: dict[str, Any], text_name: str) -> str:
    """Share of lines per tokens-per-sentence bin, one step line per tokenizer."""
    width = fig["texts"][text_name]["hist_bin_width"]
    toks = fig["order"]["tokenizers"]
    counts = [fig["results"][t][text_name]["all"]["tokens_per_sentence_hist"] for t in toks]
    shares = [[c / max(sum(h), 1) for c in h] for h in counts]
    bins = len(shares[0])
    top = max(max(s) for s in shares) or 1.0
    x0, y0, pw, ph = 56, 20, 520, 220

    def px(i: float) -> float:
        return x0 + pw * i / bins

    def py(v: float) -> float:
        return y0 + ph - ph * v / top

    parts = [f'<svg viewBox="0 0 760 {ph + 70}" width="760" height="{ph + 70}" role="img">',
             f"<title>tokens per sentence: {escape(text_name)}</title>",
             f'<rect x="{x0}" y="{y0}" width="{pw}" height="{ph}" fill="#fafafa" stroke="#ccc"/>']
    for k in range(0, bins + 1, 5):
        x, label = px(k), f"{k * width}" + ("+" if k == bins else "")
        parts += [f'<line x1="{x:.1f}" y1="{y0 + ph}" x2="{x:.1f}" y2="{y0 + ph + 4}" stroke="#888"/>',
                  f'<text x="{x:.1f}" y="{y0 + ph + 17}" text-anchor="middle" font-size="11">{label}</text>']
    for frac in (0.0, 0.5, 1.0):
        parts.append(f'<text x="{x0 - 6}" y="{py(top * frac) + 4:.1f}" text-anchor="end" '
                     f'font-size="11">{top * frac:.0%}</text>')
    parts.append(f'<text x="{x0 + pw / 2}" y="{y0 + ph + 36}" text-anchor="middle" font-size="12">'
                 f"tokens per sentence (bins of {width}; the last bin holds the tail)</text>")
    for i, (t, s) in enumerate(zip(toks, shares, strict=True)):
        pts = " ".join(f"{px(k + d):.1f},{py(v):.1f}" for k, v in enumerate(s) for d in (0, 1))
        dash = f' stroke-dasharray="{DASHES[i % len(DASHES)]}"' if DASHES[i % len(DASHES)] else ""
        ly = y0 + 12 + i * 18
        parts += [f'<polyline fill="none" stroke="{_color(i)}" stroke-width="2"{dash} points="{pts}"/>',
                  f'<line x1="{x0 + pw + 16}" y1="{ly}" x2="{x0 + pw + 40}" y2="{ly}" '
                  f'stroke="{_color(i)}" stroke-width="3"{dash}/>',
                  f'<text x="{x0 + pw + 46}" y="{ly + 4}" font-size="12">{escape(t)}</text>']
    parts.append("</svg>")
    return "".join(parts)


def sweep_chart(rows: list[dict[str, Any]]) -> str:
    """Korean tokens per sentence (left axis, line) and chars/token (labels) per number of new pieces."""
    pts = [(r["new_pieces"], r["korean_tokens_per_sentence"], r.get("korean_chars_per_token"))
           for r in rows if r.get("korean_tokens_per_sentence") is not None]
    if not pts:
        return ""
    x0, y0, pw, ph = 70, 20, 560, 220
    xmax = max(p[0] for p in pts) or 1
    ys = [p[1] for p in pts]
    base = rows[0].get("base_tokens_per_sentence")
    top = max([*ys, *([base] if base is not None else [])]) * 1.05
    low = min(ys) * 0.9

    def px(v: float) -> float:
        return x0 + pw * v / xmax

    def py(v: float) -> float:
        return y0 + ph - ph * (v - low) / max(top - low, 1e-9)

    parts = [f'<svg viewBox="0 0 760 {ph + 70}" width="760" height="{ph + 70}" role="img">',
             "<title>Korean tokens per sentence by number of new pieces</title>",
             f'<rect x="{x0}" y="{y0}" width="{pw}" height="{ph}" fill="#fafafa" stroke="#ccc"/>']
    for frac in (0.0, 0.5, 1.0):
        v = low + (top - low) * frac
        parts.append(f'<text x="{x0 - 6}" y="{py(v) + 4:.1f}" text-anchor="end" font-size="11">'
                     f"{v:.1f}</text>")
    if base is not None:
        parts += [f'<line x1="{x0}" y1="{py(base):.1f}" x2="{x0 + pw}" y2="{py(base):.1f}" '
                  f'stroke="#999" stroke-dasharray="4 3"/>',
                  f'<text x="{x0 + pw - 4}" y="{py(base) - 4:.1f}" text-anchor="end" font-size="11">'
                  f"base {base:.1f}</text>"]
    if base is not None:  # the base itself: 0 new pieces
        pts.insert(0, (0, base, None))
    line = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y, _ in pts)
    parts.append(f'<polyline fill="none" stroke="{_color(1)}" stroke-width="2" points="{line}"/>')
    for x, y, cpt in pts:
        bottom = y0 + ph
        label = f"{y:.1f}" + (f" ({cpt:.2f} c/t)" if cpt is not None else "")
        parts.append(f'<circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="3.5" fill="{_color(1)}"/>')
        if x > 0:  # the base point is labelled by its dashed line; a label here would hit the axis's
            parts.append(f'<text x="{px(x):.1f}" y="{py(y) - 8:.1f}" text-anchor="middle" font-size="11">'
                         f"{escape(label)}</text>")
        parts += [f'<line x1="{px(x):.1f}" y1="{bottom}" x2="{px(x):.1f}" y2="{bottom + 4}" stroke="#888"/>',
                  f'<text x="{px(x):.1f}" y="{bottom + 17}" text-anchor="middle" font-size="11">{x:,}</text>']
    parts += [f'<text x="{x0 + pw / 2}" y="{y0 + ph + 36}" text-anchor="middle" font-size="12">'
              "new pieces appended to the base (labels: Korean tokens per sentence, chars per token)</text>",
              "</svg>"]
    return "".join(parts)


def _table(head: list[str], rows: list[list[str]], classes: list[str] | None = None) -> str:
    out = ["<table><tr>", *(f"<th>{escape(h)}</th>" for h in head), "</tr>"]
    for i, row in enumerate(rows):
        cls = f' class="{classes[i]}"' if classes and classes[i] else ""
        out.append(f"<tr{cls}>" + "".join(row) + "</tr>")
    out.append("</table>")
    return "".join(out)


def _td(value: Any, numeric: bool = False) -> str:
    return f'<td class="n">{escape(str(value))}</td>' if numeric else f"<td>{escape(str(value))}</td>"


def _chips(pieces: list[str]) -> str:
    # ␠ (byte-level space) is missing from many fonts; CSS draws it instead.
    return "".join(
        f'<span class="tok c{i % 4}">' + escape(p).replace("␠", '<span class="sp"></span>') + "</span>"
        for i, p in enumerate(pieces)
    )


def render_html(fig: dict[str, Any]) -> str:
    base, toks, sets = fig["base"], fig["order"]["tokenizers"], fig["order"]["texts"]
    info = fig["tokenizers"]
    tok_rows = [[_td(n), _td(info[n]["kind"]), _td(f"{info[n]['vocab_size']:,}", True), _td(info[n]["file"])]
                for n in toks]
    set_rows = [[_td(n), _td(f"{fig['texts'][n]['lines']:,}", True),
                 *(_td(f"{fig['texts'][n]['buckets'][b]:,}", True) for b in BUCKET_ORDER[1:]),
                 _td(fig["texts"][n]["path"])] for n in sets]
    body = ["<h1>Tokenization efficiency</h1>",
            f"<p>Base tokenizer: <code>{escape(base)}</code>. Token counts exclude BOS/EOS.</p>",
            "<h2>Characters per token</h2><p>All lines of each text set; higher is better.</p>",
            bar_chart(fig),
            "<h2>Tokenizers</h2>", _table(["name", "kind", "vocab", "file"], tok_rows),
            "<h2>Text sets</h2>", _table(["name", "lines", *BUCKET_ORDER[1:], "path"], set_rows)]
    for text_name in sets:
        rows = _rows(fig, text_name)
        body += [f'<h2 id="set-{escape(text_name)}">{escape(text_name)}</h2>',
                 histogram_chart(fig, text_name),
                 _table(["tokenizer", "bucket", *(h for _, h, _ in COLUMNS)],
                        [[_td(t), _td(b), *(_td(_cell(m, k, f), True) for k, _, f in COLUMNS)]
                         for t, b, m in rows],
                        ["all" if b == "all" else "" for _, b, _ in rows])]
    english = fig["english_vs_base"]
    body += [f"<h2>English lines: ids identical to <code>{escape(base)}</code>?</h2>",
             _table(["tokenizer", "English lines", "identical", "all identical"],
                    [[_td(t), _td(f"{english[t]['lines']:,}", True),
                      _td(f"{english[t]['identical_lines']:,}", True),
                      _td(english_verdict(english[t]))] for t in toks])]
    if fig.get("sweep"):
        rows = fig["sweep"]
        body += ['<h2 id="sweep">Size sweep</h2>', f"<p>{escape(_sweep_note(rows))}</p>", sweep_chart(rows),
                 _table([h for _, h, _ in SWEEP_COLUMNS],
                        [[_td(c, True) for c in _sweep_cells(r)] for r in rows])]
    body += ['<h2 id="examples">Examples</h2>']
    for ex in fig["examples"]:
        rows_html = []
        for i, t in enumerate(toks):
            row = ex["tokenizers"][t]
            swatch = f'<span class="sw" style="background:{_color(i)}"></span>'
            rows_html.append([f"<td>{swatch}{escape(t)}</td>", _td(row["count"], True),
                              _td(f"{row['change_vs_base']:+d}", True), f"<td>{_chips(row['pieces'])}</td>"])
        body += [f"<p><code>{escape(ex['text'])}</code></p>",
                 _table(["tokenizer", "tokens", "vs base", "pieces"], rows_html)]
    body += ["<h2>Definitions</h2><ul>",
             *(f"<li><code>{escape(k)}</code>: {escape(v)}</li>" for k, v in fig["metrics"].items()), "</ul>"]
    return ('<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>Tokenization efficiency</title><style>{CSS}</style></head><body>\n"
            + "\n".join(body) + "\n</body></html>\n")


def render_summary(fig: dict[str, Any]) -> str:
    """The compact table `kovocab report` prints: every tokenizer on every set, all lines."""
    out = [f"{'text set':<16} {'tokenizer':<16} {'tok/sent':>8} {'chars/tok':>9} {'fertility':>9} "
           f"{'bytes':>6} {'rtrip':>6} {'MB/s':>6} {'vs base':>8}"]
    for text_name in fig["order"]["texts"]:
        for tok in fig["order"]["tokenizers"]:
            m = fig["results"][tok][text_name]["all"]
            out.append(f"{text_name:<16} {tok:<16} {m['tokens_per_sentence_mean']:8.1f} "
                       f"{m['chars_per_token']:9.2f} {m['fertility']:9.2f} {m['byte_fallback_share']:6.1%} "
                       f"{m['roundtrip_rate']:6.1%} {m['encode_mb_per_s']:6.2f} {m['tokens_vs_base']:8.0%}")
    english = fig["english_vs_base"]
    same = [f"{t} {english_verdict(english[t])} "
            f"({english[t]['identical_lines']}/{english[t]['lines']})"
            for t in fig["order"]["tokenizers"] if t != fig["base"]]
    if same:
        out.append(f"English ids identical to base {fig['base']}: " + ", ".join(same))
    return "\n".join(out)
