"""What `alignkit eval` writes: the numbers (`eval.json`), the transcripts (`samples.jsonl`), the plots and
`report.md`, from a `Comparison` (`alignkit.eval.compare`)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from alignkit.data.writing import write_jsonl
from alignkit.eval.compare import Comparison
from alignkit.eval.instructions import InstructionReport, format_comparison, score_instructions
from alignkit.eval.kl import summarise_kl
from alignkit.eval.output import markdown_table, plot_path, write_results
from alignkit.eval.plots import figure
from alignkit.eval.stats import CONFIDENCE, RESAMPLES, SEED, Estimate, bootstrap_mean, win_rate


def summarise(comparison: Comparison) -> dict:
    """Every number of the evaluation as JSON: per system the mean of each reward and the response length,
    per policy its win rate under each reward and its KL to the reference, each with its interval."""
    rewards = {}
    for name, per_system in comparison.scores.items():
        reference = per_system[0]
        rewards[name] = {
            "kind": "pass rate" if _is_pass_rate(name, comparison) else "reward",
            "mean": [bootstrap_mean(scores.mean(axis=1)).to_json() for scores in per_system],
            "win_rate": [None] + [win_rate(scores, reference).to_json() for scores in per_system[1:]],
        }
    systems = [{"name": system.name, "role": system.role,
                "length_tokens": bootstrap_mean([np.mean(row) for row in system.tokens]).to_json(),
                "length_words": bootstrap_mean([np.mean([len(t.split()) for t in row]) for row in system.texts]).to_json()}
               for system in comparison.systems]
    settings = comparison.settings
    return {
        "prompts": len(comparison.prompts),
        "settings": {"n": settings.n, "temperature": settings.temperature, "top_p": settings.top_p,
                     "max_new_tokens": settings.max_new_tokens, "seed": settings.seed,
                     "kl_samples": settings.n if settings.samples_are_the_policy else settings.kl_samples,
                     "kl_from_evaluation_samples": settings.samples_are_the_policy,
                     "chat_template": settings.chat_template, "best_of": settings.best_of},
        "bootstrap": {"resamples": RESAMPLES, "confidence": CONFIDENCE, "seed": SEED, "unit": "prompt"},
        "systems": systems,
        "rewards": rewards,
        "kl": [None] + [summarise_kl(system.kl).to_json() for system in comparison.policies],
    }


def _is_pass_rate(name: str, comparison: Comparison) -> bool:
    return name in comparison.pass_rates and all(np.isin(s, (0.0, 1.0)).all() for s in comparison.scores[name])


def sample_rows(comparison: Comparison) -> list[dict]:
    """One row per answer: system, prompt, sample index, completion, tokens and every reward."""
    rows = []
    for s, system in enumerate(comparison.systems):
        for p, (texts, tokens) in enumerate(zip(system.texts, system.tokens)):
            for i, (text, count) in enumerate(zip(texts, tokens)):
                rows.append({"system": system.name, "role": system.role, "prompt_index": p,
                             "prompt": comparison.prompts[p], "sample": i, "completion": text, "tokens": count,
                             "rewards": {name: float(values[s][p, i]) for name, values in comparison.scores.items()}})
    return rows


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", name).strip("_")[:60] or "reward"


def plot_rewards(comparison: Comparison, name: str, path: Path) -> Path:
    """The distribution of one reward's per-sample scores, one step histogram per system."""
    per_system = comparison.scores[name]
    edges = np.histogram_bin_edges(np.concatenate([s.ravel() for s in per_system]), bins=20)
    with figure(path=path) as (fig, axes):
        for system, scores in zip(comparison.systems, per_system):
            axes.hist(scores.ravel(), bins=edges, histtype="step", linewidth=1.5, label=_label(system.name))
        axes.set_xlabel(name)
        axes.set_ylabel("samples")
        axes.set_title(f"{name}: per-sample scores ({len(comparison.prompts)} prompts)")
        axes.legend(fontsize=8)
        fig.tight_layout()
    return path


def plot_win_rates(results: dict, policies: list[str], path: Path) -> Path:
    """Win rate against the reference with its interval, one bar per (policy, reward)."""
    labels, values, errors = [], [], []
    for name, reward in results["rewards"].items():
        for policy, estimate in zip(policies, reward["win_rate"][1:]):
            labels.append(f"{_label(policy)}\n{name}")
            values.append(estimate["value"])
            errors.append((estimate["value"] - estimate["low"], estimate["high"] - estimate["value"]))
    with figure(path=path) as (fig, axes):
        positions = np.arange(len(values))
        axes.barh(positions, values, xerr=np.array(errors).T, capsize=4, color="tab:blue", alpha=0.8)
        axes.axvline(0.5, color="black", linestyle="--", linewidth=1)
        axes.set_yticks(positions, labels, fontsize=7)
        axes.set_xlim(0, 1)
        axes.set_xlabel(f"win rate against the reference ({CONFIDENCE:.0%} bootstrap interval; ties ½)")
        fig.tight_layout()
    return path


def plot_frontier(results: dict, name: str, path: Path) -> Path:
    """Mean reward against KL(policy ‖ reference) per sequence (k3), the reference at KL 0."""
    means = results["rewards"][name]["mean"]
    kls = [0.0] + [kl["k3_per_sequence"]["value"] for kl in results["kl"][1:]]
    with figure(path=path) as (fig, axes):
        axes.plot(kls[1:], [m["value"] for m in means[1:]], "-o", color="tab:blue", label="policies")
        axes.plot([0.0], [means[0]["value"]], "s", color="black", label="reference")
        for system, kl, mean in zip(results["systems"], kls, means):
            axes.annotate(_label(system["name"]), (kl, mean["value"]), fontsize=7, xytext=(3, 3),
                          textcoords="offset points")
        axes.set_xlabel("KL(policy ‖ reference) per sequence, nats (k3 estimate)")
        axes.set_ylabel(f"mean {name}")
        axes.legend(fontsize=8)
        fig.tight_layout()
    return path


def _label(name: str) -> str:
    parts = Path(name).parts
    return "/".join(parts[-2:]) if len(parts) > 1 else name


def check_reports(comparison: Comparison, rows: Sequence[dict]) -> list[InstructionReport]:
    """Each system's answers scored by their prompt rows' checks (`alignkit.eval.instructions`), every sample
    counted (a system may have fewer answers per prompt than another: best-of-n keeps one of n), in system
    order: what `alignkit evaluate` tabulates per check family."""
    return [score_instructions([row for row, texts in zip(rows, system.texts) for _ in texts],
                               [text for texts in system.texts for text in texts])
            for system in comparison.systems]


def write_evaluation(comparison: Comparison, folder: Path, command: str = "",
                     check_rows: Sequence[dict] | None = None) -> dict:
    """Write eval.json, samples.jsonl, the plots and report.md into `folder`; return the results. With
    `check_rows` (the prompt rows, each with its `check`), also the per-family check tables, reference
    against each policy."""
    results = summarise(comparison)
    if check_rows is not None:
        reports = check_reports(comparison, check_rows)
        results["checks_by_family"] = [report.counts() | report.substance_counts() for report in reports]
        results["check_tables"] = [format_comparison(reports[0], report) for report in reports[1:]]
    policies = [system.name for system in comparison.policies]
    plots = {f"{name} distribution": plot_rewards(comparison, name, plot_path(folder, f"rewards_{_slug(name)}"))
             for name in comparison.scores}
    plots["win rate"] = plot_win_rates(results, policies, plot_path(folder, "win_rate"))
    if len(policies) > 1:
        for name in comparison.scores:
            plots[f"{name} against KL"] = plot_frontier(results, name, plot_path(folder, f"frontier_{_slug(name)}"))
    results["plots"] = {title: str(path.relative_to(folder)) for title, path in plots.items()}
    write_jsonl(sample_rows(comparison), folder / "samples.jsonl", overwrite=True)
    write_results(folder, "eval", results, render_report(results, command))
    return results


def _estimate(value: dict | None) -> str:
    return "—" if value is None else str(Estimate(value["value"], value["low"], value["high"], value["n"]))


def render_report(results: dict, command: str = "") -> str:
    """report.md: win rates, rewards, lengths and KL in tables, then the plots."""
    systems = results["systems"]
    settings = results["settings"]
    sampling = "greedy" if settings["temperature"] == 0 else f"temperature {settings['temperature']}, top-p {settings['top_p']}"
    lines = ["# Evaluation", "", f"{results['prompts']} prompts, {settings['n']} answer(s) per prompt per model "
             f"({sampling}, at most {settings['max_new_tokens']} new tokens, seed {settings['seed']})"
             + (f"; each policy's answer is the best of {settings['best_of']} of its samples by the first reward, "
                "the reference's a plain sample." if settings.get("best_of", 1) > 1 else "."),
             f"Intervals: {CONFIDENCE:.0%} percentile bootstrap over prompts ({RESAMPLES} resamples, seed {SEED}).", ""]
    if command:
        lines += ["```", command, "```", ""]
    reference = systems[0]["name"]
    lines += ["## Win rate against the reference", "", f"Reference: `{reference}`. Ties count ½.", ""]
    rows = [[policy["name"], name, _estimate(reward["win_rate"][k])]
            for name, reward in results["rewards"].items() for k, policy in enumerate(systems) if k > 0]
    lines += [markdown_table(["policy", "reward", "win rate"], rows)]
    lines += ["## Rewards", ""]
    header = ["model", "role"] + [f"{name} ({reward['kind']})" for name, reward in results["rewards"].items()]
    rows = [[system["name"], system["role"]] + [_estimate(reward["mean"][k]) for reward in results["rewards"].values()]
            for k, system in enumerate(systems)]
    lines += [markdown_table(header, rows), "## Response length", ""]
    rows = [[system["name"], _estimate(system["length_tokens"]), _estimate(system["length_words"])] for system in systems]
    lines += [markdown_table(["model", "tokens", "words"], rows)]
    lines += ["## KL(policy ‖ reference)", "", f"From {settings['kl_samples']} sample(s) per prompt at temperature 1 "
              f"of each policy ({'the evaluation samples' if settings['kl_from_evaluation_samples'] else 'drawn for the KL'}); "
              "k1 = Σ log-ratio, k3 = Σ (r − 1 − log r) per token (never negative), in nats.", ""]
    rows = [[system["name"]] + [_estimate(kl[key]) for key in ("k1_per_sequence", "k3_per_sequence", "k1_per_token",
                                                                 "k3_per_token")]
            for system, kl in zip(systems[1:], results["kl"][1:])]
    lines += [markdown_table(["policy", "k1 per sequence", "k3 per sequence", "k1 per token", "k3 per token"], rows)]
    for system, table in zip(systems[1:], results.get("check_tables", [])):
        lines += [f"## Checks by family: reference (before) and `{system['name']}` (after)", "", "```", table, "```", ""]
    lines += ["## Plots", ""] + [f"![{title}]({path})\n" for title, path in results.get("plots", {}).items()]
    return "\n".join(lines)

