"""The self-alignment presets: each a labeller (round context → training rows), its train recipe and the
paper's defaults (`Preset`, `alignkit.loops.rounds`). Papers and what is UNVERIFIED: docs/loops.md.

    rsf_dpa     DPA's rejection-sampling fine-tuning under a direction (Wang et al., arXiv 2402.18571)
    spa         SPA's self-labelled DPO (Kim et al., arXiv 2406.04412)
    cyclealign  CycleAlign's agreed rankings (Hong et al., arXiv 2310.16271)
    honesty     Alignment for Honesty's data from the model's own answers (Yang et al., arXiv 2312.07000)
    isheep      I-SHEEP's self-instruct, self-assess, filter (Liang et al., arXiv 2408.08072)
    self_specialization  the same from domain seed tasks (Kang et al., arXiv 2310.00160)
    long_output long-output curation by the length score S_l (Chen et al., arXiv 2410.10210)
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping
from typing import Any

from alignkit.data import Example, load_records
from alignkit.data.prompts import as_completion, as_messages
from alignkit.data.transforms import condition_prompt, direction_text, direction_weights
from alignkit.loops import isheep, long_output
from alignkit.loops.labels import agreement, dpa_angles, implicit_judgment, ranking, rsf_pick
from alignkit.loops.rounds import Preset, RoundContext
from alignkit.models.rewards.spec import reward_from_spec
from alignkit.models.verifiers import read_questions

# models.likelihood, models.loading and pipelines.honesty import torch: imported where used, so that
# `alignkit loop --list` stays light (tests/test_cli.py)


def _prompts(context: RoundContext) -> list[list[dict]]:
    """The rows' prompts as message lists (`as_messages`): sampled through the chat template and trained so."""
    return [as_messages(record.data["prompt"]) for record in context.records]


def _mean_and_sum(loaded, prompts: list, completions: list) -> tuple[list[float], list[float]]:
    from alignkit.models.likelihood import completion_likelihoods

    examples = [Example.single(p, as_completion(p, c)) for p, c in zip(prompts, completions)]
    return completion_likelihoods(loaded.model, loaded.tokenizer, examples, batch_size=8)


# ------------------------------------------------------------------------------------------------ rsf_dpa

def rsf_dpa_rows(context: RoundContext) -> list[dict]:
    """Per prompt: θ ~ U[angle_low, angle_high], v = round(100·(cos θ, sin θ)) in DPA's system prompt, K
    samples, each scored on every attribute (reward spec × scale, on the prompt without the direction), the
    argmax of vᵀr kept as an SFT row on the conditioned prompt."""
    params = context.params
    names = list(params["attributes"])
    rewards = [reward_from_spec(params["attributes"][name]["reward"]) for name in names]
    scales = [float(params["attributes"][name].get("scale", 1.0)) for name in names]
    rng = random.Random(context.seed)
    angles = dpa_angles(len(context.records), params["angle_low"], params["angle_high"], rng)
    weights = [direction_weights(angle) for angle in angles]
    originals = _prompts(context)
    prompts = [condition_prompt(p, direction_text(w, names)) for p, w in zip(originals, weights)]
    samples = context.sample(prompts)
    rows = []
    for record, original, prompt, w, angle, texts in zip(context.records, originals, prompts, weights, angles, samples):
        completions = [as_completion(prompt, text) for text in texts]
        # the attributes rate the answer to the user's prompt; the direction is not part of the task
        scores = [[scale * float(value) for value in reward.score([original] * len(texts), completions)]
                  for reward, scale in zip(rewards, scales)]
        per_sample = [list(values) for values in zip(*scores)]
        best = rsf_pick(per_sample, w)
        rows.append({"prompt": prompt, "completion": completions[best], "direction": w, "angle": angle,
                     "attributes": dict(zip(names, per_sample[best])), "source_row": record.where})
    return rows


def _check_rsf(params: Mapping[str, Any]) -> None:
    attributes = params["attributes"]
    if not isinstance(attributes, Mapping) or len(attributes) != 2:
        raise ValueError("params.attributes: need two attributes {name: {reward: SPEC, scale: NUMBER}} "
                         "(DPA's helpfulness and verbosity)")
    for name, attribute in attributes.items():
        if not isinstance(attribute, Mapping) or "reward" not in attribute:
            raise ValueError(f"params.attributes.{name}: needs a `reward` spec (and optionally a `scale`)")
        reward_from_spec(attribute["reward"])  # a bad spec fails here, before any round


# ------------------------------------------------------------------------------------------------ spa

def spa_seed_rows(params: Mapping[str, Any]) -> list[dict]:
    """The labelled seed: a `seed_fraction` of `seed_data`'s preference rows, chosen by `seed_shuffle`."""
    rows = [record.data for record in load_records(params["seed_data"])]
    order = list(range(len(rows)))
    random.Random(params["seed_shuffle"]).shuffle(order)
    count = max(1, math.ceil(params["seed_fraction"] * len(rows)))
    return [rows[i] for i in sorted(order[:count])]


def spa_rows(context: RoundContext) -> list[dict]:
    """Two samples per prompt from the current policy, labelled by its implicit reward against the model it was
    trained from; confidence-based label smoothing (`smoothing`: "confidence" or "none"); pairs below
    `min_confidence`, ties and identical samples are dropped."""
    params = context.params
    if context.reference is None:
        raise ValueError("spa labels with the implicit reward of a DPO-trained policy: round 0 (the seed) comes first")
    prompts = _prompts(context)
    pairs = [(p, texts) for p, texts in zip(prompts, context.sample(prompts, k=2)) if texts[0] != texts[1]]
    flat_prompts = [p for p, _ in pairs for _ in range(2)]
    flat = [text for _, texts in pairs for text in texts]
    _, policy = _mean_and_sum(context.model, flat_prompts, flat)
    from alignkit.models.loading import ensure_loaded

    _, reference = _mean_and_sum(ensure_loaded(context.reference), flat_prompts, flat)
    rows = []
    for i, (prompt, (first, second)) in enumerate(pairs):
        judged = implicit_judgment(policy[2 * i], reference[2 * i], policy[2 * i + 1], reference[2 * i + 1],
                                   params["beta"])
        if judged.p == 0.5 or judged.confidence < params["min_confidence"]:
            continue
        chosen, rejected = (first, second) if judged.first_chosen else (second, first)
        row = {"prompt": prompt, "chosen": as_completion(prompt, chosen), "rejected": as_completion(prompt, rejected),
               "confidence": judged.confidence}
        if params["smoothing"] == "confidence":
            row["label_smoothing"] = min(judged.smoothing, 0.499)
        rows.append(row)
    return rows


def _check_spa(params: Mapping[str, Any]) -> None:
    if not params.get("seed_data"):
        raise ValueError("params.seed_data: spa needs a labelled seed (preference rows), e.g. builtin:demo/train.jsonl")
    load_records(params["seed_data"])
    if not 0 < params["seed_fraction"] <= 1:
        raise ValueError(f"params.seed_fraction must be in (0, 1], got {params['seed_fraction']}")
    if params["smoothing"] not in ("confidence", "none"):
        raise ValueError(f"params.smoothing must be 'confidence' or 'none', got {params['smoothing']!r}")


# ------------------------------------------------------------------------------------------------ cyclealign

def cyclealign_rows(context: RoundContext) -> list[dict]:
    """K samples per prompt ranked twice — by the current model's mean token log-prob and by `ranker` (a reward
    spec: a judge model or a verifier) — and their agreement (`labels.agreement`: the longest run of the
    likelihood ranking that the ranker's scores never contradict, a tie contradicting neither order): its first
    `agreed` completions are a ranked row where it holds at least that many (ranked rows all have the same
    length). A prompt whose distinct samples all get the same ranker score is skipped: that ranker agrees with
    any order, so the row would be the model's own likelihood ranking alone."""
    params = context.params
    ranker = reward_from_spec(params["ranker"])
    prompts = _prompts(context)
    samples = context.sample(prompts)
    rows = []
    for prompt, texts in zip(prompts, samples):
        distinct = list(dict.fromkeys(texts))
        if len(distinct) < params["agreed"]:
            continue
        completions = [as_completion(prompt, text) for text in distinct]
        scores = ranker.score([prompt] * len(distinct), completions).tolist()
        if len(set(scores)) == 1:  # decided before the likelihood forward, which it would make useless
            continue
        likelihood, _ = _mean_and_sum(context.model, [prompt] * len(distinct), distinct)
        order = ranking(likelihood)
        agreed = agreement(order, scores)
        if len(agreed) >= params["agreed"]:
            rows.append({"prompt": prompt, "completions": [completions[i] for i in agreed[:params["agreed"]]],
                         "likelihood_ranking": order, "ranker_scores": scores})
    return rows


def _check_cyclealign(params: Mapping[str, Any]) -> None:
    if not params.get("ranker"):
        raise ValueError("params.ranker: cyclealign needs a second ranker (a reward spec, e.g. judge:MODEL)")
    reward_from_spec(params["ranker"])
    if params["agreed"] < 2:
        raise ValueError(f"params.agreed must be at least 2 (a ranking), got {params['agreed']}")


# ------------------------------------------------------------------------------------------------ honesty

def honesty_loop_rows(context: RoundContext) -> list[dict]:
    """`alignkit data honesty`'s rows (`method`, m samples, τ) from the current model's own answers."""
    from alignkit.pipelines.honesty import honesty_rows

    params = context.params
    rows, _ = honesty_rows(read_questions(context.records), context.model, method=params["method"], m=params["m"],
                           tau=params["tau"], max_new_tokens=params["max_new_tokens"], seed=context.seed)
    return rows


def _check_honesty(params: Mapping[str, Any]) -> None:
    from alignkit.pipelines.honesty import check_settings

    check_settings(params["method"], m=params["m"], tau=params["tau"])


PRESETS = {preset.name: preset for preset in (
    Preset("rsf_dpa", rsf_dpa_rows, "sft_smollm2", "Wang et al. 2024, arXiv 2402.18571 §3.2 (RSF under a direction)",
           "sample under a direction v in the system prompt, keep argmax vᵀr, SFT",
           {"angle_low": 0.0, "angle_high": 90.0}, ("attributes",), _check_rsf),
    Preset("spa", spa_rows, "dpo_smollm2", "Kim et al. 2024, arXiv 2406.04412 Eq. 7-8 (direct preference judgment)",
           "DPO on a labelled seed, then pairs labelled by the policy's implicit reward, smoothed by confidence",
           {"beta": 0.1, "seed_fraction": 0.1, "seed_shuffle": 0, "smoothing": "confidence", "min_confidence": 0.5},
           ("seed_data",), _check_spa, spa_seed_rows),
    Preset("cyclealign", cyclealign_rows, "aft_rank_smollm2", "Hong et al. 2023, arXiv 2310.16271 §3",
           "rank samples by likelihood and by a second ranker, train aft_rank on the agreed ranking",
           {"agreed": 2}, ("ranker",), _check_cyclealign),
    Preset("honesty", honesty_loop_rows, "honesty_sft_smollm2", "Yang et al. 2023, arXiv 2312.07000 §3.2",
           "idk data from the model's own greedy answer and samples on questions with known answers, SFT",
           {"method": "absolute", "m": 10, "tau": 0.1, "max_new_tokens": 32}, (), _check_honesty),
    Preset("isheep", isheep.isheep_rows, "sft_smollm2", "Liang et al. 2024, arXiv 2408.08072 (official code)",
           "self-instruct from seed tasks, answer, self-assess, keep rows above the thresholds, SFT",
           isheep.DEFAULTS, (), isheep.check_params),
    Preset("self_specialization", isheep.isheep_rows, "sft_smollm2", "Kang et al. 2023, arXiv 2310.00160",
           "I-SHEEP's loop started from a handful of domain seed tasks (shipped: cooking)",
           isheep.SPECIALIZATION_DEFAULTS, (), isheep.check_params),
    Preset("long_output", long_output.long_output_rows, "sft_smollm2", "Chen et al. 2024, arXiv 2410.10210",
           "keep prompts stating one length, sample, keep answers with length score S_l >= 80, SFT",
           long_output.DEFAULTS, (), long_output.check_params),
)}
