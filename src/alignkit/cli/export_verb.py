"""`alignkit export RUN`: a finished run as a model to share (library: `alignkit.models.export`).

    alignkit export runs/dpo-lora --merge-lora                  # runs/dpo-lora/merged: base + adapter, merged
    alignkit export runs/dpo-lora --merge-lora --push-to-hub me/smollm2-dpo --private
    alignkit export runs/dpo --push-to-hub me/smollm2-dpo       # pushes runs/dpo/final
"""

from __future__ import annotations

import argparse
from typing import Any

from alignkit.cli.common import RAW, require

EPILOG = """\
Every export writes a model card (README.md) into the exported folder: the base model, the objective and its
parameters, the data source and fingerprint, the final metrics, the full config.yaml and the alignkit version.
Without --merge-lora and --out the folder is RUN/final itself (a LoRA adapter's base_model_name_or_path is set
to the model as the recipe names it). --push-to-hub needs a login: `hf auth login` or HF_TOKEN.
"""


def add_export_verb(verbs: argparse._SubParsersAction) -> None:
    parser = verbs.add_parser("export", help="merge a LoRA run into its base, write a model card, push to the hub",
                              description="Export a finished `alignkit train` run (its output_dir).",
                              epilog=EPILOG, formatter_class=RAW)
    parser.add_argument("run_dir", metavar="RUN", help="the run folder (config.yaml, metrics.jsonl, final/)")
    parser.add_argument("--merge-lora", action="store_true",
                        help="write the base model with the LoRA adapter merged in (a plain causal LM)")
    parser.add_argument("--out", metavar="DIR", help="export folder (default: RUN/merged with --merge-lora, "
                                                     "else RUN/final itself; otherwise a copy of final/)")
    parser.add_argument("--push-to-hub", metavar="REPO", help="upload the exported folder to this hub repo")
    parser.add_argument("--private", action="store_true", help="with --push-to-hub: create the repo private")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out folder")
    parser.set_defaults(run=_export)


def objective_parameters(config: dict[str, Any]) -> dict[str, Any]:
    """The run's objective parameters: the registry's defaults with the config's values over them (the
    config's alone when the objective is not registered here)."""
    from alignkit.objectives import get

    objective = config.get("objective") or {}
    params = dict(objective.get("params") or {})
    try:
        return {**get(str(objective.get("name", "dpo"))).defaults, **params}
    except KeyError:
        return params


def _export(args: argparse.Namespace) -> int:
    from alignkit.models.export import export_run, push_to_hub, read_run

    require(not args.private or args.push_to_hub, "--private applies to --push-to-hub REPO; give the repo")
    run = read_run(args.run_dir)
    folder = export_run(run, merge=args.merge_lora, out=args.out, overwrite=args.overwrite,
                        objective_params=objective_parameters(run.config), title=args.push_to_hub)
    what = "merged model" if args.merge_lora else "LoRA adapter" if run.is_lora else "model"
    print(f"exported the {what} with its model card to {folder}")
    if args.push_to_hub:
        url = push_to_hub(folder, args.push_to_hub, private=args.private,
                          commit_message=f"alignkit export of {run.folder.name}")
        print(f"pushed {folder} to {url}")
    return 0
