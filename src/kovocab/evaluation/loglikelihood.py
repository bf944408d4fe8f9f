"""Batched log P(continuation | context) for (context, continuation) token pairs.

Inputs: a `Scorer` and pairs from `Scorer.encode_pair`. Semantics are lm-evaluation-harness's
HFLM `_loglikelihood_tokens` (input (context + continuation)[-(window + 1):][:-1]); choices of
one item share their context, which is run once and reused through the KV cache.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from kovocab.errors import InputError
from kovocab.evaluation.scoring import Scorer, show_progress

Pair = tuple[Sequence[int], Sequence[int]]


def continuation_logprobs(
    scorer: Scorer,
    pairs: Sequence[Pair],
    batch_size: int = 16,
    progress: bool | None = None,
    desc: str = "score",
    share_contexts: bool = True,
) -> list[tuple[float, bool]]:
    """log P(continuation | context) (nats) and whether it is the greedy path, for each pair.

    Pairs whose context is shared (the choices of one item) and that fit the window are
    scored by running the context once and every continuation on its KV cache. The rest
    (truncated, or alone) go through one padded forward per batch of whole pairs. Either way
    rows are left-padded with explicit position ids and only the positions that predict a
    continuation token go through the LM head, the bulk of the cost with a 32k-46k vocabulary.
    """
    import torch
    from tqdm import tqdm

    for _, cont in pairs:
        if not cont:
            raise InputError("a continuation encodes to no tokens; nothing to score")
    groups: dict[tuple[int, ...], list[int]] = {}
    alone: list[int] = []
    for i, (ctx, cont) in enumerate(pairs):
        if share_contexts and ctx and len(ctx) + len(cont) <= scorer.window + 1:
            groups.setdefault(tuple(ctx), []).append(i)
        else:
            alone.append(i)
    alone += [g[0] for g in groups.values() if len(g) == 1]
    shared = sorted((g for g in groups.values() if len(g) > 1), key=lambda g: -len(pairs[g[0]][0]))
    alone.sort(key=lambda i: -len(pairs[i][0]) - len(pairs[i][1]))

    jobs: list[tuple[str, list[Any]]] = []
    batch: list[list[int]] = []
    for g in shared:  # whole groups, about batch_size continuations per batch
        if batch and sum(map(len, batch)) + len(g) > batch_size:
            jobs.append(("shared", batch))
            batch = []
        batch.append(g)
    if batch:
        jobs.append(("shared", batch))
    jobs += [("pairs", alone[i : i + batch_size]) for i in range(0, len(alone), batch_size)]

    out: list[tuple[float, bool]] = [(0.0, False)] * len(pairs)
    with torch.inference_mode():
        for kind, job in tqdm(jobs, desc=desc, unit="batch", disable=not show_progress(progress)):
            scores = _shared(scorer, pairs, job) if kind == "shared" else _pairs(scorer, pairs, job)
            for i, score in scores.items():
                out[i] = score
    return out


def _left_padded(rows: Sequence[Sequence[int]]) -> tuple[Any, Any, Any]:
    """ids, attention mask and position ids for rows aligned on their last token."""
    import torch

    width = max(len(r) for r in rows)
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    for k, r in enumerate(rows):
        ids[k, width - len(r) :] = torch.tensor(list(r), dtype=torch.long)
        mask[k, width - len(r) :] = 1
    return ids, mask, (mask.cumsum(-1) - 1).clamp(min=0)


def _score(scorer: Scorer, hidden: Any, targets: Sequence[int]) -> tuple[Any, Any]:
    """log p(target) and whether it is the argmax, for hidden states (N, H) and N target ids.

    Only these rows go through the LM head, and log-softmax is taken as logit - logsumexp on
    the target alone, in float32: most of the cost with a 32k-46k vocabulary is right here.
    """
    import torch

    logits = scorer.head(hidden).float()
    t = torch.tensor(list(targets), device=logits.device)[:, None]
    picked = logits.gather(-1, t)[:, 0]
    return picked - torch.logsumexp(logits, -1), picked >= logits.amax(-1)


def _collect(
    index: Sequence[int], lengths: Sequence[int], lp: Any, greedy: Any
) -> dict[int, tuple[float, bool]]:
    """Per-pair sums over consecutive runs of `lengths` token scores."""
    out, at = {}, 0
    lp, greedy = lp.tolist(), greedy.tolist()
    for i, n in zip(index, lengths, strict=True):
        out[i] = (float(sum(lp[at : at + n])), bool(all(greedy[at : at + n])))
        at += n
    return out


def _pairs(scorer: Scorer, pairs: Sequence[Pair], batch: list[int]) -> dict[int, tuple[float, bool]]:
    """One forward over whole (context + continuation) rows, left-truncated to the window."""
    import torch

    rows, targets = [], []
    for i in batch:
        ctx, cont = pairs[i]
        full = [*ctx, *cont][-(scorer.window + 1) :]
        rows.append(full[:-1])
        targets.append(full[-min(len(cont), len(full) - 1) :])
    ids, mask, pos = _left_padded(rows)
    dev = scorer.device
    hidden = scorer.decoder(input_ids=ids.to(dev), attention_mask=mask.to(dev), position_ids=pos.to(dev),
                            use_cache=False).last_hidden_state
    width = ids.shape[1]
    # the last len(target) positions of a left-padded row predict its continuation
    r = torch.tensor([k for k, t in enumerate(targets) for _ in t])
    c = torch.tensor([width - len(t) + j for t in targets for j in range(len(t))])
    lp, greedy = _score(scorer, hidden[r.to(dev), c.to(dev)], [x for t in targets for x in t])
    return _collect(batch, [len(t) for t in targets], lp, greedy)


def _shared(scorer: Scorer, pairs: Sequence[Pair], groups: list[list[int]]) -> dict[int, tuple[float, bool]]:
    """Contexts once (keeping their KV cache and last hidden state), then every continuation on top."""
    import torch

    dev = scorer.device
    ids, mask, pos = _left_padded([pairs[g[0]][0] for g in groups])
    res = scorer.decoder(input_ids=ids.to(dev), attention_mask=mask.to(dev), position_ids=pos.to(dev),
                         use_cache=True)
    owner = [g for g, members in enumerate(groups) for _ in members]
    index = [i for members in groups for i in members]
    conts = [list(pairs[i][1]) for i in index]
    # each continuation's first token is predicted by its context's last position
    hidden = [res.last_hidden_state[owner, -1]]
    rows: list[int] = []
    cols: list[int] = []
    targets = [c[0] for c in conts]
    rest_len = max(len(c) for c in conts) - 1
    if rest_len:
        cache = res.past_key_values
        cache.batch_select_indices(torch.tensor(owner, device=dev))  # one cache row per continuation
        cids = torch.zeros(len(conts), rest_len, dtype=torch.long)
        cmask = torch.zeros(len(conts), rest_len, dtype=torch.long)
        for r, c in enumerate(conts):
            cids[r, : len(c) - 1] = torch.tensor(c[:-1], dtype=torch.long)
            cmask[r, : len(c) - 1] = 1
            rows += [r] * (len(c) - 1)
            cols += range(len(c) - 1)
            targets += c[1:]
        cpos = mask.sum(-1)[owner][:, None] + torch.arange(rest_len)[None, :]
        full_mask = torch.cat([mask[owner], cmask], dim=1)
        rest = scorer.decoder(input_ids=cids.to(dev), attention_mask=full_mask.to(dev),
                              position_ids=cpos.to(dev), past_key_values=cache, use_cache=True)
        hidden.append(rest.last_hidden_state[torch.tensor(rows, device=dev), torch.tensor(cols, device=dev)])
    lp, greedy = _score(scorer, torch.cat(hidden), targets)
    # scores come as [first tokens of all continuations] + [later tokens, continuation by continuation]
    n = len(conts)
    order = [[r] for r in range(n)]
    at = n
    for r, c in enumerate(conts):
        order[r] += range(at, at + len(c) - 1)
        at += len(c) - 1
    perm = torch.tensor([k for o in order for k in o], device=lp.device)
    return _collect(index, [len(c) for c in conts], lp[perm], greedy[perm])
