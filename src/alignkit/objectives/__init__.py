"""Training objectives as pure functions over per-example log-probs, with a registry.

    losses, metrics = alignkit.objectives.dpo(pc, pr, rc, rr, beta=0.1)
    objective = alignkit.objectives.get("dpo")
"""

from alignkit.objectives.dpo import dpo
from alignkit.objectives.listwise import aft, aft_rank, d2o, logo, poft
from alignkit.objectives.online import grpo, online_dpo, reinforce_pp, rloo
from alignkit.objectives.pairwise import asft, hinge, ipo, jpo, orpo, rpo, simpo
from alignkit.objectives.registry import KNOWN_INPUTS, Objective, available, get, register
from alignkit.objectives.rewards import arm, rm_multi, rm_pairwise
from alignkit.objectives.sft import sft
from alignkit.objectives.unpaired import bco, bco_udm, gradient_ascent, kto, npo, npo_rt

__all__ = ["KNOWN_INPUTS", "Objective", "aft", "aft_rank", "arm", "asft", "available", "bco", "bco_udm", "d2o", "dpo", "get",
           "gradient_ascent", "grpo", "hinge", "ipo", "jpo", "kto", "logo", "npo", "npo_rt", "online_dpo", "orpo", "poft",
           "register", "reinforce_pp", "rloo", "rm_multi", "rm_pairwise", "rpo", "sft", "simpo"]
