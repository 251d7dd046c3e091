"""`alignkit generate --method NAME`: decoding-time alignment from the command line.

    alignkit generate --method best_of_n --model smollm2-135m-instruct --reward verifier:max_words=30 \\
        --prompts prompts.jsonl --out completions.jsonl --param n=8
    echo "Explain tides." | alignkit generate --method urial --model smollm2-135m-instruct --prompts - --out -

Prompts come from a dataset with a `prompt` field (string or message list), a `.txt` file (one prompt per
line) or stdin (`-`: JSON lines if the first line starts with "{", else one prompt per line). A string prompt
is one user message through the model's chat template (`--no-chat-template`: as is; `--chat-template NAME|FILE`
for a model without one; `add_chat_template_options`). Each output row is the input row plus `method`,
`completion`, `tokens` and the method's diagnostics.
"""

from __future__ import annotations

import argparse
import json
import sys

INPUT_FLAGS = {"reward": "--reward SPEC", "guide": "--guide MODEL", "arm": "--arm MODEL",
               "directions": "--directions FILE or --contrast FILE"}  # how each method input is given here
CHAT_TEMPLATE_HELP = ("how prompts are rendered for the model: auto (default) uses the model's chat template, a "
                      "plain-string prompt (a .txt line, a string prompt field) as one user message; none is "
                      "--no-chat-template; chatml or zephyr is a built-in template and FILE a Jinja template file, "
                      "for a model whose tokenizer has none (they replace its own). A model without a chat "
                      "template needs one of these or --no-chat-template")
NO_CHAT_TEMPLATE_HELP = ("feed prompts as raw text, without a chat template (base models): a string as is, a "
                         "message list as its last user message")
EPILOG_TAIL = """
chat templates: every method renders prompts through --model's chat template except urial (its own
plain-text frame, always) and nudging's base model (the raw query in its base_format; the --guide reads
its chat template). --chat-template chatml|zephyr|FILE sets --model's template (and --guide's when it has
none); --no-chat-template sets chat_template=false (and nudging's guide_chat_template=false).

reward specs are those of `alignkit score --reward` (verifier:..., classifier:PATH, judge:MODEL), plus
verifier:checks=FILE (each prompt's own instruction check). --param KEY=VALUE sets any keyword parameter
of the method (values are YAML: 8, 0.4, true, [1, 2]); common ones have their own flags (above).
"""


def generate_epilog() -> str:
    """The methods of `alignkit.decode.methods.METHODS`, each with the flags of its required inputs."""
    from alignkit.decode.methods import METHODS

    lines = ["methods (alignkit generate --list shows each one's parameters, defaults and sources):"]
    for method in METHODS.values():
        flags = ", ".join(INPUT_FLAGS[need] for need in method.needs) or "(the model alone)"
        lines.append(f"  {method.name:<11} {flags}")
        lines.append(f"  {'':<11} {method.description}")
    return "\n".join(lines) + "\n" + EPILOG_TAIL


def add_chat_template_options(parser: argparse.ArgumentParser) -> None:
    """`--chat-template auto|none|chatml|zephyr|FILE` and `--no-chat-template` (`--chat-template none`), into
    `args.chat_template`; `chat_template_choice(args)` reads it."""
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--chat-template", default="auto", metavar="auto|none|chatml|zephyr|FILE",
                       help=CHAT_TEMPLATE_HELP)
    group.add_argument("--no-chat-template", dest="chat_template", action="store_const", const="none",
                       default="auto", help=NO_CHAT_TEMPLATE_HELP)


def chat_template_choice(args: argparse.Namespace) -> bool | str:
    """True (the model's template), False (raw text) or the Jinja source of --chat-template NAME|FILE (a
    ValueError for a missing FILE, before any model loads)."""
    from alignkit.data.prompts import resolve_chat_template

    return resolve_chat_template(args.chat_template)


def add_generate_verb(verbs: argparse._SubParsersAction) -> None:
    parser = verbs.add_parser("generate", help="decoding-time alignment: best-of-N, URIAL, nudging, DeAL, ...",
                              description="Complete prompts with a decoding-time alignment method.",
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    format_help = parser.format_help

    def format_help_with_methods() -> str:  # the registry imports torch: read it only when help is shown
        parser.epilog = generate_epilog()
        return format_help()
    parser.format_help = format_help_with_methods
    parser.add_argument("--method", help="decoding method (see below)")
    parser.add_argument("--list", action="store_true", help="list the methods with their parameters and exit")
    parser.add_argument("--model", help="the model that writes (base, prior or policy): name, folder or .gguf")
    parser.add_argument("--prompts", help="prompts: a dataset with a prompt field, a .txt file, or - for stdin")
    parser.add_argument("--out", help="output .jsonl (a new file), or - for stdout")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    parser.add_argument("--prompt-field", default="prompt")
    parser.add_argument("--reward", metavar="SPEC", help="reward for best_of_n, worst_of_n, deal, transfer_q")
    parser.add_argument("--baseline-reward", metavar="SPEC", help="transfer_q's r_BL (indirect transfer)")
    parser.add_argument("--rollout-model", metavar="MODEL", help="transfer_q's rollout model (default: --model)")
    parser.add_argument("--guide", metavar="MODEL", help="nudging's small aligned model")
    parser.add_argument("--arm", metavar="MODEL", action="append", help="genarm's autoregressive reward model(s)")
    parser.add_argument("--directions", metavar="FILE", help="steering directions (.safetensors)")
    parser.add_argument("--contrast", metavar="FILE", help="steering: compute directions from contrastive rows")
    parser.add_argument("--save-directions", metavar="FILE", help="steering: also save the computed directions")
    parser.add_argument("--max-new-tokens", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--param", action="append", default=[], metavar="KEY=VALUE", help="any method parameter")
    add_chat_template_options(parser)
    parser.set_defaults(run=_generate)


def _generate(args: argparse.Namespace) -> int:
    from alignkit.decode.methods import METHODS, check_parameters, get_method

    if args.list:
        _print_methods(METHODS)
        return 0
    for flag in ("method", "model", "prompts", "out"):
        if getattr(args, flag) is None:
            raise ValueError(f"--{flag} is required (or use --list)")
    method = get_method(args.method)
    template = chat_template_choice(args)
    parameters = {**_raw_prompts(method, template), **_parameters(args.param), **_common(args)}
    check_parameters(method, {**parameters, **{need: True for need in method.needs}})
    if args.out != "-":
        from alignkit.data.writing import check_output

        check_output(args.out, [args.prompts] if args.prompts != "-" else [], overwrite=args.overwrite)
    from alignkit.data import read_prompts
    from alignkit.data.records import load_prompt_records

    records = load_prompt_records(args.prompts, args.prompt_field)
    if not records:
        raise ValueError(f"no prompts in {args.prompts}")
    rows, prompts = [record.data for record in records], read_prompts(records, args.prompt_field)
    model, tokenizer = _load(args.model)
    _set_template(tokenizer, template, replace=True)
    parameters.update(_inputs(args, method, model, tokenizer))
    _set_template(parameters.get("guide_tokenizer"), template, replace=False)
    completions = method.function(model, tokenizer, prompts, **parameters)
    out_rows = [{**row, "method": method.name, **completion.to_json()} for row, completion in zip(rows, completions)]
    _write(out_rows, args)
    return 0


def _raw_prompts(method, template: bool | str) -> dict:
    """With --no-chat-template: `chat_template=False` (and nudging's `guide_chat_template=False`)."""
    if template is not False:
        return {}
    return {name: False for name in ("chat_template", "guide_chat_template") if name in method.parameters()}


def _set_template(tokenizer, template: bool | str, replace: bool) -> None:
    """--chat-template NAME|FILE: the tokenizer's chat template (kept when it has one and not `replace`)."""
    if tokenizer is not None and isinstance(template, str) and (replace or not tokenizer.chat_template):
        tokenizer.chat_template = template


def _print_methods(methods: dict) -> None:
    import inspect

    for method in methods.values():
        print(f"{method.name:<11} {method.description}")
        print(f"{'':<11} mechanism: {method.mechanism}; needs: {', '.join(method.needs) or 'nothing else'}")
        print(f"{'':<11} source: {method.source}")
        shown = {k: v for k, v in method.parameters().items() if v is not inspect.Parameter.empty}
        print(f"{'':<11} parameters: " + ", ".join(f"{k}={v!r}" for k, v in shown.items()))


def _parameters(items: list[str]) -> dict:
    """--param KEY=VALUE pairs, values parsed as YAML scalars or lists."""
    import yaml

    parameters = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--param {item!r}: expected KEY=VALUE")
        parameters[key.strip()] = yaml.safe_load(value)
    return parameters


def _common(args: argparse.Namespace) -> dict:
    flags = {"max_new_tokens": args.max_new_tokens, "batch_size": args.batch_size, "seed": args.seed}
    return {key: value for key, value in flags.items() if value is not None}


def _load(name: str):
    from alignkit.models.loading import ensure_loaded

    model, tokenizer, _ = ensure_loaded(name)
    return model.eval(), tokenizer


def _inputs(args: argparse.Namespace, method, model, tokenizer) -> dict:
    """The extra models, rewards or directions a method takes, loaded from the flags."""
    from alignkit.models.rewards.spec import reward_from_spec

    accepted = method.parameters()
    flags = {"reward": args.reward, "baseline_reward": args.baseline_reward, "rollout_model": args.rollout_model,
             "guide": args.guide, "arm": args.arm, "directions": args.directions or args.contrast}
    unused = [name for name, value in flags.items() if value and name not in accepted]
    if unused:
        raise ValueError(f"--method {method.name} does not take " + ", ".join(f"--{n.replace('_', '-')}" for n in unused))

    inputs: dict = {}
    if args.reward:
        inputs["reward"] = reward_from_spec(args.reward)
    if args.baseline_reward:
        inputs["baseline_reward"] = reward_from_spec(args.baseline_reward)
    if args.rollout_model:
        inputs["rollout_model"] = _load(args.rollout_model)[0]
    if args.guide:
        inputs["guide"], inputs["guide_tokenizer"] = _load(args.guide)
    if args.arm:
        arms = [_load(name)[0] for name in args.arm]
        inputs["arm"] = arms[0] if len(arms) == 1 else arms
    if "directions" in method.needs:
        inputs["directions"] = _directions(args, model, tokenizer)
    missing = [need for need in method.needs if need not in inputs]
    if missing:
        raise ValueError(f"--method {method.name} needs " + ", ".join(INPUT_FLAGS[m] for m in missing))
    return inputs


def _directions(args: argparse.Namespace, model, tokenizer) -> dict:
    from alignkit.decode.steering import load_directions, save_directions, steering_directions

    if bool(args.directions) == bool(args.contrast):
        raise ValueError("--method steering needs exactly one of --directions FILE or --contrast FILE")
    if args.directions:
        return load_directions(args.directions)
    from alignkit.data import load_records
    from alignkit.decode.steering import contrast_texts

    positive, negative = contrast_texts(load_records(args.contrast), tokenizer)
    directions = steering_directions(model, tokenizer, positive, negative)
    if args.save_directions:
        save_directions(directions, args.save_directions)
    return directions


def _write(rows: list[dict], args: argparse.Namespace) -> None:
    if args.out == "-":
        for row in rows:
            print(json.dumps(row, ensure_ascii=False))
        return
    from alignkit.data.writing import write_jsonl

    write_jsonl(rows, args.out, inputs=[args.prompts] if args.prompts != "-" else [], overwrite=args.overwrite)
    print(f"wrote {len(rows)} completions to {args.out}", file=sys.stderr)
