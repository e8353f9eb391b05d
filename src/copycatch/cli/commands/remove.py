"""``copycatch remove``: launder a model the thief holds with a chain of removal attacks.

Reads a model file, applies every ``--attack SPEC`` in order on the thief's data (the attacker
pool of ``--data``), prints test accuracy before/after each step, and writes the laundered model.
Input-side evasions (``noise``, ``reject``) leave the weights alone; when the chain has any, a
deployment file ``<output>.evasion.safetensors`` is written next to the model, and
``copycatch verify --suspect <that file>`` queries the model *through* them (see
:mod:`copycatch.attacks.removal.evasion`). ``--verify KEY`` rehearses the verification at once.

``copycatch steal … --then SPEC`` chains the same removals after extraction (:func:`launder`).
"""

from __future__ import annotations

import argparse
import json
import textwrap
from typing import Any

from .. import options

VERB = "remove"
HELP = "launder a model the thief holds: fine-tune, prune, compress, Neural Cleanse, piracy, input-side evasions"

EXAMPLES = textwrap.dedent("""\
    examples:
      copycatch remove -i stolen.safetensors -a prune:rate=0.5 -a fine-tune:epochs=2 -o laundered.safetensors
      copycatch remove -i stolen.safetensors -a neural-cleanse:unlearn=true -o cleansed.safetensors
      copycatch remove -i stolen.safetensors -a reject:detector=energy -o deployed.safetensors --verify victim.cckey
      copycatch verify --key victim.cckey --suspect deployed.evasion.safetensors   # through the evasions
      copycatch steal --victim victim.safetensors -o laundered.safetensors --then prune:rate=0.5 --then fine-tune

    An attack SPEC is NAME or NAME:key=value,key=value (parameters listed above with their defaults; each
    attack's docstring explains them). Attacks run in the order given; input-side evasions must come last.
    Training options (--epochs, --lr, ...) apply to attacks that train, unless the SPEC sets epochs/lr.""")


def _attack_table() -> str:
    from ...attacks.launder import show_value
    from ...attacks.removal import REMOVAL_ATTACKS

    rows = REMOVAL_ATTACKS.describe()
    width = max(len(n) for n, _ in rows)
    lines = ["removal attacks (--attack NAME[:key=value,...]):"]
    indent = " " * (width + 4)
    for name, summary in rows:
        lines.append(f"  {name:<{width}}  {summary}")
        params = ", ".join(f"{n}={show_value(d)}" for n, _, d in REMOVAL_ATTACKS.get(name).factory.Params.describe())
        if params:
            lines.extend(textwrap.wrap(params, 110, initial_indent=indent, subsequent_indent=indent))
    return "\n".join(lines)


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        VERB,
        help=HELP,
        formatter_class=options.Formatter,
        epilog=_attack_table() + "\n\n" + EXAMPLES,
        description="Play the thief after the theft: apply removal attacks in order to a model you hold, on your own "
        "data (the attacker pool of --data), and print test accuracy before and after each one.",
    )
    p.add_argument(
        "-i",
        "--model",
        required=True,
        help="the thief's model file (.safetensors), or a deployment file (.evasion.safetensors) to add "
        "further evasions to",
    )
    p.add_argument(
        "-a",
        "--attack",
        action="append",
        required=True,
        metavar="SPEC",
        type=options.removal_spec,
        help="removal attack NAME[:key=value,...] (repeatable; applied in order)",
    )
    p.add_argument("-o", "--output", required=True, help="laundered model file to write")
    p.add_argument(
        "--verify",
        action="append",
        metavar="KEY",
        default=None,
        help="afterwards, verify the laundered model (through its evasions) against this key or key set (repeatable)",
    )
    p.add_argument("--alpha", type=float, default=1e-3, help="significance level for --verify")
    p.add_argument(
        "--pirate-key",
        default=None,
        metavar="FILE",
        help="where the piracy attack writes the thief's own key (None: <output>.pirate.cckey)",
    )
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    options.add_data_options(p)
    p.set_defaults(data=None, split_seed=None)  # default: the data set and split recorded in the model
    recorded = {
        "data": " (None: the data set recorded in the model, else fashion-mnist)",
        "split_seed": " (None: the split seed recorded in the model, else 0)",
    }
    for action in p._actions:
        action.help += recorded.get(action.dest, "") if action.help else ""
    options.add_train_options(p, epochs=5)
    options.add_common(p)
    p.set_defaults(func=run)
    return p


def _resolve_data_args(args: argparse.Namespace, provenance: dict[str, Any]) -> None:
    """Fill --data / --split-seed from the model's provenance when the user did not give them."""
    if args.data is None:
        args.data = provenance.get("dataset") or "fashion-mnist"
    if args.split_seed is None:
        args.split_seed = int(provenance.get("split_seed", 0))


def run(args: argparse.Namespace) -> int:
    from ... import api
    from ...attacks.launder import jsonable
    from ...attacks.removal.evasion import is_deployment, load_deployment
    from ...core.keyset import load_key_file
    from ...models.io import load_model

    out = options.writable(args.output, "model file")
    if args.pirate_key:
        options.writable(args.pirate_key, "pirate key file")
    keys = [load_key_file(k) for k in args.verify or ()]  # load (and digest-check) keys and key sets before any work
    model, evasions = load_deployment(args.model) if is_deployment(args.model) else (load_model(args.model), [])
    _resolve_data_args(args, model.provenance)
    laundering = api.remove(
        model,
        args.attack,
        options.splits(args),
        evasions=evasions,
        config=options.train_config(args),
        output=out,
        pirate_key=args.pirate_key,
        progress=options.progress(args),
    )
    # a rehearsal of the verification: the fixed test on the whole key, through the laundered deployment
    runs = [api.verify(laundering.oracle(), key, alpha=args.alpha, sequential=False) for key in keys]
    report = {**laundering.report, "input": str(args.model), "output": str(out)}
    if runs:
        report["evidence"] = [{"key": str(p), **e.to_dict()} for p, r in zip(args.verify, runs) for e in r.evidences]
        combined = [{"key": str(p), **r.combined.to_dict()} for p, r in zip(args.verify, runs) if r.combined]
        if combined:  # a key set's parts, combined
            report["combined"] = combined
    if args.json:
        options.say(json.dumps(jsonable(report), indent=2))
        return 0
    options.say_steps(laundering.report["steps"])
    options.say(f"model written to {out}")
    if "deployment" in report:
        options.say(
            f"deployment (model behind {'+'.join(e.name for e in laundering.evasions)}) written to "
            f"{report['deployment']}; verify through it with --suspect {report['deployment']}"
        )
    for path, run in zip(args.verify or (), runs):
        options.say(f"\nverification against {path} (querying the laundered deployment):")
        options.say("\n\n".join(e.summary() for e in run.evidences))
        if run.combined is not None:
            options.say("\n" + run.combined.summary())
    return 0
