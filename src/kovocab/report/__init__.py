"""The tokenization-efficiency report: tokenizers × text sets -> report.json/.md/.html.

measure (`efficiency_report`: the figures) · texts (reading text sets, script buckets)
· html (report.md and the self-contained report.html).
"""
