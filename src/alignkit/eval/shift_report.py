"""What `alignkit analyze shift` reports of a token distribution shift analysis (`alignkit.eval.shift`): the
fractions of unshifted / marginal / shifted positions (over all positions, and the mean over prompts with a
bootstrap interval), the tokens most often shifted, the shift by answer position, `shift.json`, `report.md`
and the plot `plots/shift_by_position.png`.

The per-token table follows AlignTDS `src/demo/generate_html.py` (shifted counts keyed by the aligned token's
text, and the fraction of its occurrences that are shifted); the reference ratios are the shifted ratios the
AlignTDS README reports for its web demos (Lin et al., arXiv 2312.01552).
"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path
from typing import Any

from alignkit.eval.output import markdown_table
from alignkit.eval.plots import figure
from alignkit.eval.shift import CLASSES, MARGINAL, SHIFTED, UNSHIFTED, ShiftAnalysis
from alignkit.eval.stats import bootstrap_mean

# Shifted ratios (rank > 3) of the AlignTDS web demos, as its README states them (base, aligned, ratio).
PAPER_SHIFTED_RATIOS = (
    ("Llama-2-7b", "Llama-2-7b-chat", 0.078),
    ("Llama-2-7b", "Vicuna-7b-v1.5", 0.048),
    ("Mistral-7b", "Mistral-7b-instruct", 0.052),
)
BUCKET_WIDTH = 8
TOP_TOKENS = 20


def class_fractions(classes: list[str]) -> dict[str, float]:
    """The fraction of positions in each class (0.0 each when there are none)."""
    counts = Counter(classes)
    return {name: counts[name] / len(classes) if classes else 0.0 for name in CLASSES}


def per_prompt_fractions(analysis: ShiftAnalysis) -> dict[str, dict]:
    """Each class's fraction averaged over prompts (each prompt with at least one answer token weighs the same),
    with its percentile-bootstrap interval over prompts (`alignkit.eval.stats.bootstrap_mean`)."""
    per_prompt = [class_fractions(answer.classes) for answer in analysis.answers if answer.ranks]
    return {name: bootstrap_mean([fractions[name] for fractions in per_prompt]).to_json() for name in CLASSES}


def shifted_tokens(analysis: ShiftAnalysis, limit: int = TOP_TOKENS) -> list[dict[str, Any]]:
    """The `limit` tokens (by text) most often at shifted positions: how often shifted, how often they occur
    in the answers, and the fraction of their occurrences that are shifted."""
    shifted: Counter[str] = Counter()
    occurrences: Counter[str] = Counter()
    for answer in analysis.answers:
        for token, label in zip(answer.tokens, answer.classes):
            occurrences[token] += 1
            shifted[token] += label == SHIFTED
    ranked = sorted((token for token in shifted if shifted[token]), key=lambda t: (-shifted[t], -occurrences[t], t))
    return [{"token": token, "shifted": shifted[token], "occurrences": occurrences[token],
             "fraction_shifted": shifted[token] / occurrences[token]} for token in ranked[:limit]]


def by_position(analysis: ShiftAnalysis, width: int = BUCKET_WIDTH) -> list[dict[str, Any]]:
    """Answer positions t (0-based) in buckets [w·i, w·(i+1)): positions, class fractions, mean top-k KL and
    mean base probability of the aligned token in each bucket (buckets without positions are left out)."""
    if width < 1:
        raise ValueError(f"the position bucket width must be at least 1, got {width}")
    buckets: dict[int, list[tuple[str, float, float]]] = {}
    for answer in analysis.answers:
        for t, (label, kl, prob) in enumerate(zip(answer.classes, answer.kls, answer.base_probs)):
            buckets.setdefault(t // width, []).append((label, kl, prob))
    rows = []
    for index in sorted(buckets):
        items = buckets[index]
        rows.append({"start": index * width, "end": (index + 1) * width, "positions": len(items),
                     **class_fractions([label for label, _, _ in items]),
                     "mean_kl": sum(kl for _, kl, _ in items) / len(items),
                     "mean_base_prob": sum(prob for _, _, prob in items) / len(items)})
    return rows


def summarize(analysis: ShiftAnalysis, *, bucket_width: int = BUCKET_WIDTH, top_tokens: int = TOP_TOKENS) -> dict:
    """Every number of the analysis' summary (the `summary` of `shift.json`)."""
    classes = [label for answer in analysis.answers for label in answer.classes]
    if not classes:
        raise ValueError("the aligned model's answers are all empty (EOS first): no positions to analyse")
    kls = [kl for answer in analysis.answers for kl in answer.kls]
    return {"prompts": len(analysis.answers), "positions": len(classes), "fractions": class_fractions(classes),
            "per_prompt": per_prompt_fractions(analysis), "mean_kl": sum(kls) / len(kls),
            "shifted_tokens": shifted_tokens(analysis, top_tokens), "bucket_width": bucket_width,
            "by_position": by_position(analysis, bucket_width)}


def position_records(analysis: ShiftAnalysis) -> list[dict[str, Any]]:
    """Per prompt: the prompt, the answer and one record per answer position."""
    return [{"prompt": answer.prompt, "answer": answer.answer,
             "positions": [{"t": t, "token_id": token_id, "token": token, "rank": rank, "class": label,
                            "base_prob": prob, "kl": kl, "base_top": top}
                           for t, (token_id, token, rank, label, prob, kl, top) in enumerate(zip(
                               answer.answer_ids, answer.tokens, answer.ranks, answer.classes, answer.base_probs,
                               answer.kls, answer.base_top))]}
            for answer in analysis.answers]


def shift_results(analysis: ShiftAnalysis, summary: dict, settings: dict) -> dict:
    """The content of `shift.json`: settings, summary, the reference ratios and every position's record."""
    reference = [{"base": base, "aligned": aligned, "shifted": ratio}
                 for base, aligned, ratio in PAPER_SHIFTED_RATIOS]
    return {"settings": {**settings, "frame": analysis.frame, "top_k": analysis.top_k}, "summary": summary,
            "paper_shifted_ratios": reference, "answers": position_records(analysis)}


def _percent(value: float) -> str:
    return f"{100 * value:.1f}%"


def shift_report(summary: dict, settings: dict) -> str:
    """`report.md`: the fractions next to the AlignTDS ratios, the most shifted tokens, the shift by position."""
    fractions, per_prompt = summary["fractions"], summary["per_prompt"]
    lines = ["# Token distribution shift", "",
             f"Base `{settings['base']}` (frame `{settings['frame']}`) scored on the greedy answers of aligned "
             f"`{settings['aligned']}` to {summary['prompts']} prompts ({summary['positions']} answer positions; "
             f"top-k KL with k = {settings['top_k']}, base ‖ aligned). Unshifted: the aligned token is the base's "
             "top token; marginal: its rank 2 or 3; shifted: rank > 3 (Lin et al., arXiv 2312.01552; "
             "Re-Align/AlignTDS).",
             "", "## Fractions of positions", ""]
    rows = [(name, _percent(fractions[name]), f"{_percent(per_prompt[name]['value'])} "
             f"[{_percent(per_prompt[name]['low'])}, {_percent(per_prompt[name]['high'])}]") for name in CLASSES]
    lines += [markdown_table(("class", "all positions", "mean over prompts [95% CI]"), rows),
              f"Mean top-{settings['top_k']} KL: {summary['mean_kl']:.4f}.", "",
              "Shifted ratios the AlignTDS README reports (7B models, just-eval prompts):", ""]
    reference = [(f"{base} vs {aligned}", _percent(ratio)) for base, aligned, ratio in PAPER_SHIFTED_RATIOS]
    reference.append((f"this run: {settings['base']} vs {settings['aligned']}", _percent(fractions[SHIFTED])))
    lines += [markdown_table(("pair", "shifted"), reference), "## Most often shifted tokens", ""]
    tokens = [(repr(item["token"]), item["shifted"], item["occurrences"], _percent(item["fraction_shifted"]))
              for item in summary["shifted_tokens"]]
    lines += [markdown_table(("token", "shifted", "occurrences", "of its occurrences shifted"), tokens)
              if tokens else "No shifted positions.\n", "## By answer position", "",
              "![shifted and marginal fraction by answer position](plots/shift_by_position.png)", ""]
    buckets = [(f"{b['start']}–{b['end'] - 1}", b["positions"], _percent(b[UNSHIFTED]), _percent(b[MARGINAL]),
                _percent(b[SHIFTED]), f"{b['mean_kl']:.4f}") for b in summary["by_position"]]
    lines.append(markdown_table(("positions t", "n", "unshifted", "marginal", "shifted", "mean KL"), buckets))
    return "\n".join(lines)


def plot_shift_by_position(buckets: list[dict[str, Any]], path: str | os.PathLike) -> Path:
    """The shifted and the marginal fraction of positions against answer position (bucket starts), as a PNG."""
    starts = [bucket["start"] for bucket in buckets]
    with figure(path=path) as (fig, axes):
        axes.plot(starts, [b[SHIFTED] for b in buckets], marker="o", color="tab:red", label="shifted (rank > 3)")
        axes.plot(starts, [b[MARGINAL] for b in buckets], marker="s", color="tab:orange", label="marginal (rank 2-3)")
        axes.set_xlabel(f"answer position t (start of a {buckets[0]['end'] - buckets[0]['start']}-token bucket)"
                        if buckets else "answer position t")
        axes.set_ylabel("fraction of positions")
        axes.set_ylim(0.0, max([0.05] + [max(b[SHIFTED], b[MARGINAL]) * 1.1 for b in buckets]))
        axes.set_title("Token distribution shift by answer position")
        axes.grid(alpha=0.3)
        axes.legend()
        fig.tight_layout()
    return Path(path)
