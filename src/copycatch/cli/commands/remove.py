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
import math
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

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
    from ...attacks.removal import REMOVAL_ATTACKS

    rows = REMOVAL_ATTACKS.describe()
    width = max(len(n) for n, _ in rows)
    lines = ["removal attacks (--attack NAME[:key=value,...]):"]
    for name, summary in rows:
        cls = REMOVAL_ATTACKS.get(name).factory
        lines.append(f"  {name:<{width}}  {summary}")
        params = ", ".join(f"{n}={_show(d)}" for n, _, d in cls.Params.describe())
        if params:
            indent = " " * (width + 4)
            lines.extend(textwrap.wrap(params, 110, initial_indent=indent, subsequent_indent=indent))
    return "\n".join(lines)


def _show(value: Any) -> str:
    if isinstance(value, (tuple, list)):
        return ",".join(map(str, value))
    return "''" if value == "" else str(value)


def removal_spec(text: str) -> str:
    """argparse ``type=``: check a removal SPEC (name and parameters) before any work starts."""
    from ...attacks.removal.base import resolve_removal
    from ...core.errors import CopycatchError

    try:
        resolve_removal(text)
    except CopycatchError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    from ..main import _add_common, _add_data_options, _add_train_options, _Formatter

    p = subparsers.add_parser(
        VERB, help=HELP, formatter_class=_Formatter, epilog=_attack_table() + "\n\n" + EXAMPLES,
        description="Play the thief after the theft: apply removal attacks in order to a model you hold, on your own "
                    "data (the attacker pool of --data), and print test accuracy before and after each one.")
    p.add_argument("-i", "--model", required=True,
                   help="the thief's model file (.safetensors), or a deployment file (.evasion.safetensors) to add "
                        "further evasions to")
    p.add_argument("-a", "--attack", action="append", required=True, metavar="SPEC", type=removal_spec,
                   help="removal attack NAME[:key=value,...] (repeatable; applied in order)")
    p.add_argument("-o", "--output", required=True, help="laundered model file to write")
    p.add_argument("--verify", action="append", metavar="KEY", default=None,
                   help="afterwards, verify the laundered model (through its evasions) against this key (repeatable)")
    p.add_argument("--alpha", type=float, default=1e-3, help="significance level for --verify")
    p.add_argument("--pirate-key", default=None, metavar="FILE",
                   help="where the piracy attack writes the thief's own key (None: <output>.pirate.cckey)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    _add_data_options(p)
    p.set_defaults(data=None, split_seed=None)  # default: the data set and split recorded in the model
    recorded = {"data": " (None: the data set recorded in the model, else fashion-mnist)",
                "split_seed": " (None: the split seed recorded in the model, else 0)"}
    for action in p._actions:
        action.help += recorded.get(action.dest, "") if action.help else ""
    _add_train_options(p, epochs=5)
    _add_common(p)
    p.set_defaults(func=run)
    return p


# ---------------------------------------------------------------------------------------------------------------------


def _resolve_data_args(args: argparse.Namespace, provenance: dict[str, Any]) -> None:
    """Fill --data / --split-seed from the model's provenance when the user did not give them."""
    if args.data is None:
        args.data = provenance.get("dataset") or "fashion-mnist"
    if args.split_seed is None:
        args.split_seed = int(provenance.get("split_seed", 0))


def _check_fits(model, splits, specs: Sequence[str]) -> None:
    from ...attacks.removal.base import resolve_removal
    from ...core.errors import InvalidArgument

    if tuple(model.input_shape) != tuple(splits.input_shape):
        raise InvalidArgument(f"the model takes inputs shaped {tuple(model.input_shape)} but data set "
                              f"{splits.dataset!r} has {tuple(splits.input_shape)}; pick the matching --data")
    if model.num_classes != splits.num_classes and resolve_removal(specs[0]).name != "transfer":
        raise InvalidArgument(f"the model has {model.num_classes} classes but data set {splits.dataset!r} has "
                              f"{splits.num_classes}; only a first `transfer` attack may change the label set")


def _jsonable(value: Any) -> Any:
    """The JSON part of an attack's info (tensors and keys are summarised, not dumped)."""
    import torch

    from ...core.key import Key

    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, torch.Tensor):
        return {"tensor": list(value.shape)}
    if isinstance(value, Key):
        return {"key_digest": value.digest, "scheme": value.scheme}
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def _fmt(acc: float | None) -> str:
    return "n/a" if acc is None or acc != acc else f"{acc:.4f}"


def _spec_text(attack) -> str:
    """The attack as a SPEC naming only the parameters that differ from their defaults."""
    defaults = {name: _jsonable(default) for name, _, default in type(attack).Params.describe()}
    changed = {k: v for k, v in attack.params.to_dict().items() if v != defaults.get(k)}
    return attack.name + (":" + ",".join(f"{k}={_show(v)}" for k, v in changed.items()) if changed else "")


def apply_chain(model, specs: Sequence[str], splits, config, output: Path, *, progress: bool | None,
                evasions: Sequence[Any] = (), pirate_key: str | None = None, quiet_print: bool = False
                ) -> tuple[Any, list[Any], dict[str, Any]]:
    """Run the chain, write the pirate keys and the deployment file; returns (final result, results, report)."""
    from ...attacks.removal import run_chain
    from ...attacks.removal.base import resolve_removal
    from ...attacks.removal.evasion import save_deployment
    from ..main import _print
    from ...core.key import Key

    attacks = [resolve_removal(s) for s in specs]
    results = run_chain(model, attacks, splits.attacker_pool, test=splits.test, train=config, progress=progress,
                        evasions=evasions)
    report: dict[str, Any] = {"data": splits.dataset, "thief_examples": len(splits.attacker_pool),
                              "test_examples": len(splits.test), "steps": []}
    say = (lambda *a: None) if quiet_print else _print
    for i, (attack, result) in enumerate(zip(attacks, results), 1):
        summary = result.info.get("summary", "")
        say(f"[{i}/{len(attacks)}] {_spec_text(attack)}: {summary}")
        say(f"      test accuracy {_fmt(result.accuracy_before)} -> {_fmt(result.accuracy_after)} "
            f"({result.seconds:.1f} s)")
        step = {"attack": attack.name, "params": attack.params.to_dict(), "accuracy_before": result.accuracy_before,
                "accuracy_after": result.accuracy_after, "seconds": round(result.seconds, 3),
                "info": _jsonable({k: v for k, v in result.info.items() if k != "summary"}), "summary": summary}
        key = result.info.get("key")
        if isinstance(key, Key):
            path = Path(pirate_key) if pirate_key else output.with_name(output.name.removesuffix(".safetensors")
                                                                         + ".pirate.cckey")
            if len([r for r in results if isinstance(r.info.get("key"), Key)]) > 1:
                path = path.with_name(f"{path.stem}.{i}{path.suffix}")
            key.save(path)
            step["pirate_key"] = str(path)
            say(f"      the thief's own key written to {path}")
        report["steps"].append(step)
    final = results[-1]
    if final.evasions:
        deployment = save_deployment(output, final.model, final.evasions)
        report["deployment"] = str(deployment)
    return final, results, report


def launder(model, specs: Sequence[str], splits, config, output: str | Path, *, progress: bool | None = None):
    """``steal --then``: apply removals to a fresh surrogate (on the attacker pool) and return the laundered model.

    The caller writes the model to ``output``; a deployment file for input-side evasions is written here.
    """
    from ..main import _print

    output = Path(output)
    _check_fits(model, splits, specs)
    final, _, report = apply_chain(model, specs, splits, config, output, progress=progress)
    if "deployment" in report:
        guards = "+".join(e.name for e in final.evasions)
        _print(f"deployment (model behind {guards}) written to {report['deployment']}")
    return final.model


def run(args: argparse.Namespace) -> int:
    from ... import api
    from ...attacks.removal.evasion import is_deployment, load_deployment
    from ..main import _print, _progress, _splits, _train_config, _writable
    from ...core.key import Key
    from ...models.base import load_model, save_model

    out = _writable(args.output, "model file")
    if args.pirate_key:
        _writable(args.pirate_key, "pirate key file")
    keys = [Key.load(k) for k in args.verify or ()]  # load (and digest-check) keys before any work
    evasions: list[Any] = []
    if is_deployment(args.model):
        model, evasions = load_deployment(args.model)
    else:
        model = load_model(args.model)
    _resolve_data_args(args, model.provenance)
    splits = _splits(args)
    _check_fits(model, splits, args.attack)
    final, results, report = apply_chain(model, args.attack, splits, _train_config(args), out,
                                         progress=_progress(args), evasions=evasions, pirate_key=args.pirate_key,
                                         quiet_print=args.json)
    save_model(final.model, out)
    report.update({"input": str(args.model), "output": str(out)})
    if not args.json:
        _print(f"model written to {out}")
        if "deployment" in report:
            _print(f"deployment (model behind {'+'.join(e.name for e in final.evasions)}) written to "
                   f"{report['deployment']}; verify through it with --suspect {report['deployment']}")
    evidence = []
    for path, key in zip(args.verify or (), keys):
        ev = api.verify(final.oracle(), key, alpha=args.alpha)
        evidence.append({"key": str(path), **json.loads(ev.to_json())})
        if not args.json:
            _print(f"\nverification against {path} (querying the laundered deployment):")
            _print(ev.summary())
    if evidence:
        report["evidence"] = evidence
    if args.json:
        _print(json.dumps(_jsonable(report), indent=2))
    return 0
