"""The evidence record of a verification: ``evidence.json`` for machines, ``report.html`` for people.

``copycatch verify --report DIR`` writes, beside ``DIR/transcript.jsonl``:

* ``evidence.json`` (format ``copycatch.evidence/1``): for each key the scheme, the null hypothesis in words,
  the statistic, the p-value (and whether it is exact), the smallest p-value the key and query budget can give
  (above α, the test could never have rejected, and the evidence says so), α, the decision, the queries used and
  the key digest;
  the combined evidence when there are several keys; the suspect's fingerprint; the package and dependency
  versions; the settings and command line; and the query transcript's hash chain (every line's hash and the
  head), so the JSON commits to every answer the suspect gave;
* ``report.html``: the same for a reader — the verdict, a warning when α was out of reach, a paragraph in plain
  words (what was tested, what the p-value means, the decision at α), tables whose fields have plain names (the
  glossary at the end gives each one's technical name), a plot of the suspect's statistic against its null
  distribution with the rejection region shaded (the exact binomial null where the scheme has one; the reference
  innocent models of a calibration where one exists), the sequential test's e-value path, and how to check the
  transcript. The plots are inline SVG drawn here: the page is one self-contained file, no plotting library
  needed. ``docs/reading-evidence.md`` walks through the page.

``--sign-with owner.key`` names the owner's public key in ``evidence.json`` (``signer``) and signs it and the
transcript (detached ``.sig`` files; :mod:`copycatch.verification.signed_evidence`).
"""

from __future__ import annotations

import datetime as _dt
import html
import importlib.metadata
import itertools
import json
import math
import os
import platform
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .._version import __version__
from ..core.evidence import Evidence, _finite
from ..core.stats import binomial_critical_greater
from .sequential import STOP_REASONS

FORMAT = "copycatch.evidence/1"
DEPENDENCIES = (
    "torch", "numpy", "scipy", "safetensors", "onnx", "onnxruntime", "httpx", "scikit-learn", "fastapi", "cryptography",
)  # fmt: skip


def environment() -> dict[str, Any]:
    """Versions of Python, the platform, copycatch and every installed dependency that can touch a verdict."""
    packages = {}
    for name in DEPENDENCIES:
        try:
            packages[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return {
        "copycatch": __version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "packages": packages,
    }


_KEY_META = ("created", "dataset", "arch", "num_classes", "input_shape", "victim_sha256", "package_version")


def evidence_document(
    run: Any, *, command: Sequence[str] | None = None, signer: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The JSON evidence record of a :class:`~copycatch.verification.session.VerificationRun`. ``signer`` (from
    :func:`~copycatch.verification.signed_evidence.signer_record`) names the key that will sign the written file,
    inside what it signs, so the signature cannot be passed off as another owner's."""
    per_key = []
    for evidence, key in zip(run.evidences, run.keys):
        d = evidence.to_dict()
        d["key"] = {
            "digest": key.digest,
            "scheme": key.scheme,
            "params": key.params,
            "meta": {k: key.meta.get(k) for k in _KEY_META if k in key.meta},
        }
        per_key.append(d)
    doc: dict[str, Any] = {
        "format": FORMAT,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "verdict": run.verdict,
        "decision": run.decision,
        "alpha": run.alpha,
        "queries_used": run.queries,
        "suspect": run.suspect,
        "evidence": per_key,
        "combined": run.combined.to_dict() if run.combined is not None else None,
        "transcript": run.transcript.summary(chain=True),
        "settings": run.settings,
        "command": list(command) if command is not None else None,
        "environment": environment(),
    }
    if signer is not None:
        doc["signer"] = signer
    doc.update(_headline(run))
    return _finite(doc)


def _headline(run: Any) -> dict[str, Any]:
    """The headline fields at the top of the document: the one key's, or the combination's over several keys."""
    if len(run.evidences) == 1:  # the common single-key case
        e = run.evidences[0]
        return {
            "scheme": e.scheme,
            "null_hypothesis": e.null_hypothesis,
            "statistic_name": e.statistic_name,
            "statistic": e.statistic,
            "p_value": e.p_value,
            "smallest_attainable_p": e.metrics.get("smallest_attainable_p"),
            "exact": e.exact,
            "key_digest": e.key_digest,
        }
    c = run.combined
    return {
        "scheme": "+".join(e.scheme for e in run.evidences),
        "null_hypothesis": c.null_hypothesis,
        "statistic_name": f"{c.method} combined p-value",
        "statistic": c.p_value,
        "p_value": c.p_value,
        "exact": all(e.exact for e in run.evidences),
        "key_digest": [e.key_digest for e in run.evidences],
    }


def write_report(
    directory: str | os.PathLike,
    run: Any,
    *,
    command: Sequence[str] | None = None,
    signer: dict[str, Any] | None = None,
) -> dict[str, Path]:
    """Write ``evidence.json`` and ``report.html`` into ``directory``; returns their paths."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    doc = evidence_document(run, command=command, signer=signer)
    paths = {"json": out / "evidence.json", "html": out / "report.html"}
    _atomic_write(paths["json"], json.dumps(doc, indent=2, sort_keys=True) + "\n")
    _atomic_write(paths["html"], render_html(doc, run))
    return paths


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".part")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


# ---------------------------------------------------------------------------------------------------------------------
# HTML
# ---------------------------------------------------------------------------------------------------------------------

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;max-width:980px;margin:2em auto;
padding:0 1em;color:#1d1d1f;line-height:1.45}
h1{font-size:1.6em;margin-bottom:.2em}h2{font-size:1.2em;margin-top:1.8em;border-bottom:1px solid #ddd}
h3{font-size:1.05em;margin-top:1.4em}
.verdict{font-size:1.4em;font-weight:700;padding:.5em .8em;border-radius:6px;display:inline-block}
.stolen{background:#fde2e1;color:#8a1c17}.clear{background:#e3f4e4;color:#1e5b23}
.inconclusive{background:#fff4e5;color:#8a4b00}
.summary{font-size:1.05em;background:#f5f7fa;border-left:4px solid #4a7ab5;padding:.7em 1em;margin:1em 0}
.alert{background:#fff4e5;border:2px solid #e65100;border-radius:6px;padding:.7em 1em;margin:1em 0}
.alert strong{color:#b33c00}
table{border-collapse:collapse;margin:.5em 0;width:100%}td,th{border-bottom:1px solid #eee;padding:.25em .5em;
text-align:left;vertical-align:top}th{width:34%;color:#444;font-weight:600}code,.mono{font-family:ui-monospace,
Menlo,Consolas,monospace;font-size:.9em;word-break:break-all}.note{color:#555}.small{font-size:.85em}
.warn{background:#fff4e5;border-left:4px solid #e65100;padding:.5em .8em}
figure{margin:1em 0}figcaption{color:#444;font-size:.85em;max-width:760px}.key{display:block;margin:.2em 0}
svg.plot{display:block;width:100%;max-width:760px;height:auto;background:#fff;font-family:Helvetica,Arial,sans-serif}
.sw{display:inline-block;width:.9em;height:.9em;vertical-align:-.1em;border:1px solid #888;margin-right:.4em}
dl.glossary dt{font-weight:600;margin-top:.7em}dl.glossary dd{margin:0 0 0 1.2em}.tech{color:#555}
"""

# What the page calls each field (plain words), the field it stands for in evidence.json (or the statistical term),
# and what it means: rendered as the glossary, so the tables can speak plainly without losing the technical name.
_GLOSSARY: dict[str, tuple[str, str]] = {
    "Verdict": (
        "verdict, decision",
        "“stolen” when the chance of the suspect's answers by luck is at or below the threshold α; otherwise "
        "“not stolen”, which only says that the evidence is not strong enough, not that the suspect is innocent.",
    ),
    "Key type": ("scheme", "the watermarking or fingerprinting method that made the owner's secret key."),
    "Suspect model": ("suspect (kind, identity, sha256)", "the model under test, and a digest that pins it down."),
    "Questions asked": ("queries_used, queries", "how many inputs were sent to the suspect."),
    "Matches on the key": (
        "statistic, statistic_name (a count with a binomial null)",
        "how many of the key's inputs the suspect answered the way a model that learned from the owner's would.",
    ),
    "Score on the key": ("statistic, statistic_name", "the scheme's test statistic, for schemes that do not count."),
    "Matches expected by luck": (
        "details.null_model: trials × rate",
        "how many matches an innocent model makes on average on the same inputs.",
    ),
    "What “innocent” means here": (
        "null hypothesis (null_hypothesis)",
        "the assumption the test tries to reject: the suspect is independent of the owner's key.",
    ),
    "Chance of this by luck": (
        "p-value (p_value)",
        "the probability that an innocent model, one for which the null hypothesis holds, matches the key at least "
        "this well by chance. Small means unlikely by luck. Exact unless marked approximate.",
    ),
    "Smallest chance this test can show": (
        "smallest attainable p-value (smallest_attainable_p)",
        "the chance by luck that a perfect copy would get with this key and query budget. Above α, the test could "
        "never say “stolen”, whatever the suspect answered.",
    ),
    "Threshold for “stolen”": (
        "significance level α (alpha)",
        "fixed before the test: the largest chance by luck accepted as proof. It bounds the rate at which innocent "
        "models are called stolen.",
    ),
    "Key fingerprint": ("key_digest", "SHA-256 of the key's content: it names the key without revealing it."),
    "Chance curve for an innocent model": (
        "null distribution (details.null_model)",
        "for each possible number of matches, its probability for an innocent model: Binomial(trials, rate).",
    ),
    "Shaded “stolen” zone": (
        "rejection region (from the critical value on)",
        "the results whose chance by luck is at or below α; a suspect inside it is called stolen.",
    ),
    "Evidence as the questions went on": (
        "sequential test: the running maximum e-value (details.sequential.trajectory)",
        "a measure of evidence that stays valid whenever the questioning stops; crossing its line proves theft early.",
    ),
    "Innocent reference models": (
        "calibration (details.calibration)",
        "models known to be innocent, verified with the same key, to show where innocent p-values fall.",
    ),
    "Record of the answers": (
        "transcript (head hash)",
        "every question and answer, hash-chained: the head hash commits to the whole record.",
    ),
    "Adjusted for testing several keys": (
        "Holm-adjusted p-value (holm_adjusted)",
        "each key's chance by luck, corrected so that testing several keys does not inflate false accusations.",
    ),
    "All keys together": (
        "combined p-value: Fisher's method (fisher_p_value) or Holm's (holm_adjusted)",
        "one chance by luck for all keys; the evidence says which method decides and why.",
    ),
}

# Plain names of the measures schemes report beside their test (Evidence.metrics); others are spelled from their key.
_METRIC_NAMES = {
    "hits": "Secret answers given",
    "matches": "Matches",
    "misclassified": "Key inputs not given their true class",
    "triggers": "Key inputs",
    "watermark_accuracy": "Share of key inputs given the secret answer",
    "watermark_detection_rate": "Detection rate over random draws",
    "null_hit_rate": "Chance of one match by luck",
    "null_rate": "Chance of one match by luck",
    "null_mean": "Average score of an innocent model",
    "null_arch": "Innocent architecture the p-value is computed for",
    "certainty": "Certainty threshold",
    "queried": "Key inputs asked",
    "successes": "Matches",
    "counted": "Key inputs that count",
    "max_e_value": "Largest e-value reached",
}
_HIDDEN_METRICS = {"key_size", "stopped", "smallest_attainable_p"}  # shown in their own rows


def _metric_name(name: str) -> str:
    return _METRIC_NAMES.get(name) or name.replace("_", " ").capitalize()


def _e(v: Any) -> str:
    return html.escape(str(v))


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def _rows(pairs: Sequence[tuple[str, Any]]) -> str:
    return "<table>" + "".join(f"<tr><th>{_e(k)}</th><td>{v}</td></tr>" for k, v in pairs) + "</table>"


def _count(x: float) -> str:
    """An expected count as a reader says it: 3.3, 16, 1,234 (never 1.2e+03)."""
    return f"{x:,.0f}" if x >= 10 else f"{x:.2g}"


def _odds(p: float) -> str:
    """A p-value in words a reader can picture: a percentage, or one chance in N."""
    if p >= 0.01:
        return f"about {100 * p:.2g}%"
    if p < 1e-300:
        return "less than 1 in 10<sup>300</sup>"
    n = float(f"{1 / p:.2g}")
    if n < 1e6:
        return f"about 1 in {n:,.0f}"
    exponent = math.floor(math.log10(n))
    return f"about 1 in {n / 10**exponent:.1f} × 10<sup>{exponent}</sup>"


def smallest_p(evidence: Evidence) -> float | None:
    """The smallest p-value the key and query budget can give: the scheme's own figure, else the most extreme value
    of the null the evidence records (every counted query a match: rate^trials)."""
    smallest = evidence.metrics.get("smallest_attainable_p")
    if smallest is not None:
        return float(smallest)
    null = evidence.details.get("null_model") or {}
    if null.get("type") == "binomial":
        return float(null["rate"]) ** int(null["trials"])
    return None


def _unreachable(run: Any) -> float | None:
    """The smallest p-value the deciding test could give, when it is above α: "stolen" was then out of reach."""
    several = len(run.evidences) > 1
    smallest = getattr(run, "smallest_attainable_p", None) if several else smallest_p(run.evidences[0])
    return smallest if smallest is not None and smallest > run.alpha else None


def render_html(doc: dict[str, Any], run: Any) -> str:
    unreachable = _unreachable(run)
    if doc["decision"]:
        verdict, css = "STOLEN", "stolen"
    elif unreachable is not None:
        verdict, css = "NOT STOLEN (inconclusive: α out of reach)", "inconclusive"
    else:
        verdict, css = "NOT STOLEN", "clear"
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        "<meta name='viewport' content='width=device-width, initial-scale=1'><link rel='icon' href='data:,'>",
        f"<title>copycatch evidence: {_e(doc['verdict'])}</title><style>{_CSS}</style></head><body>",
        "<h1>Ownership verification</h1>",
        f"<p class='note'>Written {_e(doc['created'])} by copycatch {_e(__version__)}.</p>",
        f"<div class='verdict {css}' id='verdict'>Verdict: {_e(verdict)}</div>",
    ]
    if unreachable is not None:  # above the summary: it changes what the verdict means
        parts.append(_unreachable_alert(unreachable, run.alpha))
    parts.append(_summary(doc, run))
    parts.append(
        _rows(
            [
                ("Suspect model", _suspect_line(doc["suspect"])),
                ("Chance of this by luck", f"{_e(f'{run.p_value:.4g}')} ({_odds(run.p_value)})"),
                ("Threshold for “stolen”", f"α = {_e(_fmt(run.alpha))}"),
                ("Questions asked", _e(doc["queries_used"])),
                ("Record of the answers", f"<code>{_e(doc['transcript']['head'])}</code>"),
            ]
        )
    )
    calibrations = getattr(run, "calibrations", {})
    for i, evidence in enumerate(run.evidences):
        parts.append(_evidence_section(i, evidence, calibrations.get(evidence.key_digest), len(run.evidences) > 1))
    if doc.get("combined"):
        parts.append(_combined_section(doc["combined"]))
    parts.append(_transcript_section(doc["transcript"]))
    if doc.get("signer"):
        parts.append(_signer_section(doc["signer"]))
    parts.append(_fingerprint_section(doc["suspect"]))
    parts.append(_software_section(doc["environment"]))
    if doc.get("command"):
        parts.append(f"<h2>Command</h2><p><code>{_e(' '.join(doc['command']))}</code></p>")
    parts.append(_glossary_section(run))
    parts.append("</body></html>")
    return "\n".join(parts)


def _summary(doc: dict[str, Any], run: Any) -> str:
    """One paragraph in plain words: what was tested, what the p-value means, and the decision at α."""
    s = doc["suspect"]
    who = f"<b>{_e(s.get('identity', '?'))}</b> ({_e(s.get('kind', '?'))})"
    if len(run.evidences) == 1:
        e = run.evidences[0]
        tested = (
            f"copycatch asked the suspect model {who} {_e(doc['queries_used'])} questions built from the owner's "
            f"secret <b>{_e(e.scheme)}</b> key (fingerprint <code>{_e(e.key_digest[:12])}</code>). "
            + _match_sentence(e)
        )
        null, what = e.null_hypothesis, "the key"
    else:
        schemes = ", ".join(_e(e.scheme) for e in run.evidences)
        tested = (
            f"copycatch asked the suspect model {who} {_e(doc['queries_used'])} questions built from "
            f"{len(run.evidences)} secret keys ({schemes}); each key was tested on its own and the results "
            f"were combined with {_e(run.combined.method.capitalize())}'s method. "
        )
        null, what = run.combined.null_hypothesis, "the keys"
    p, alpha = run.p_value, run.alpha
    meaning = (
        f"If the suspect were innocent (<i>{_e(null.rstrip('.'))}</i>), the chance that it would match {what} this "
        f"well or better by luck alone is <b>p = {p:.3g}</b> ({_odds(p)}). "
    )
    if doc["decision"]:
        decision = (
            f"That is at or below the threshold α = {alpha:g} fixed before the test, so the evidence <b>shows</b> "
            "that the suspect depends on the owner's key: <b>stolen</b>."
        )
    else:
        decision = (
            f"That is above the threshold α = {alpha:g} fixed before the test, so the evidence <b>does not show</b> "
            "that the suspect depends on the owner's key: <b>not stolen</b> (absence of evidence is not evidence "
            "of innocence)."
        )
    return f"<p class='summary' id='summary'>{tested}{meaning}{decision}</p>"


def _match_sentence(e: Evidence) -> str:
    null = e.details.get("null_model") or {}
    if null.get("type") == "binomial" and null.get("trials"):
        expected = null["trials"] * null["rate"]
        return (
            f"Of the {null['trials']} key inputs that count, it answered {null['observed']} the owner's secret way "
            f"({_e(null.get('statistic_name') or e.statistic_name)}); an innocent model would do so about "
            f"{_count(expected)} times. "
        )
    return f"Its score on the key ({_e(e.statistic_name)}) is {_e(_fmt(e.statistic))}. "


def _null_note(exact: bool) -> str:
    """What the p-value plot of a test without a binomial null says about that null."""
    what = (
        "The test's p-value is exact (computed from the key's random draws, not estimated) though its null is not a "
        "binomial count."
        if exact
        else "This scheme's null distribution is not binomial."
    )
    return f"{what} Run <code>copycatch calibrate</code> to compare the suspect with innocent reference models here."


def _unreachable_alert(smallest: float, alpha: float) -> str:
    return (
        "<div class='alert' role='alert' id='alpha-unreachable'><strong>Warning: α cannot be reached with this key "
        "and query budget.</strong> Even a perfect copy, answering every question in the most incriminating way, "
        f"would get a chance by luck of {_e(f'{smallest:.3g}')}, above the threshold α = {_e(_fmt(alpha))}: the "
        "test could never have rejected, so the verdict is “not stolen” whatever the suspect answered, and it says "
        "nothing about the suspect. Verify with a larger key (more key inputs) or a larger query budget.</div>"
    )


def _suspect_line(s: dict[str, Any]) -> str:
    digest = s.get("sha256") or s.get("source_sha256") or s.get("info_sha256") or s.get("weights_sha256")
    line = f"{_e(s.get('identity', '?'))} <span class='note'>({_e(s.get('kind', '?'))})</span>"
    if digest:
        line += f"<br><code class='small'>sha256 {_e(digest)}</code>"
    return line


def _evidence_section(i: int, evidence: Evidence, calibration: Any, several: bool) -> str:
    seq = evidence.details.get("sequential") or {}
    body = [f"<h2>Evidence {i + 1}: {_e(evidence.scheme)} key</h2>", _rows(_evidence_rows(evidence, seq))]
    smallest = smallest_p(evidence)
    if several and smallest is not None and smallest > evidence.alpha:  # one key: the alert at the top says it
        body.append(
            f"<p class='warn'>This key's test could never have rejected: the smallest p-value this key and query "
            f"budget can give is {_e(f'{smallest:.3g}')}, above α = {_e(_fmt(evidence.alpha))}.</p>"
        )
    null_model = evidence.details.get("null_model")
    if null_model and null_model.get("type") == "binomial":
        body += _binomial_null_plot(null_model, evidence.alpha)
    if calibration is not None:
        body += _calibration_plot(evidence, calibration)
    if not null_model and calibration is None:
        body.append(
            "<h3>The suspect's chance by luck against the threshold</h3><figure>"
            + pvalue_svg(evidence.p_value, evidence.alpha)
            + _caption(
                [
                    (REGION, "Shaded “stolen” zone: p ≤ α (right is stronger evidence: −log10 of the p-value)."),
                    (SUSPECT, "The suspect."),
                    (None, _null_note(evidence.exact)),
                ]
            )
            + "</figure>"
        )
    if seq.get("used") and seq.get("trajectory"):
        body.append(
            "<h3>Evidence as the questions went on</h3><figure>"
            + trajectory_svg(seq)
            + _caption(
                [
                    (
                        TRAJECTORY,
                        f"The always-valid e-value (log10 of its running maximum) after each batch of "
                        f"{seq['batch_size']} questions.",
                    ),
                    (
                        REGION,
                        f"Shaded “stolen” zone: e-value ≥ 1/(w·α), w = {seq['early_share']:g}; crossing into it "
                        f"proves theft at any stopping time. {seq.get('queries_saved', 0)} questions were saved.",
                    ),
                ]
            )
            + "</figure>"
        )
    if evidence.notes:
        body.append("<ul class='note small'>" + "".join(f"<li>{_e(n)}</li>" for n in evidence.notes) + "</ul>")
    return "\n".join(body)


def _evidence_rows(evidence: Evidence, seq: dict[str, Any]) -> list[tuple[str, str]]:
    """The table of one key's evidence in plain words (the glossary gives each row's technical name)."""
    if seq.get("used"):
        reason = STOP_REASONS.get(seq.get("stop_reason"), seq.get("stop_reason"))
        how = (
            f" of {_e(evidence.metrics.get('key_size'))} (asked in batches, stopping as soon as the answer was "
            f"clear; stopped because {_e(reason)})"
        )
    else:
        how = " (the whole key, in one go)"
    null = evidence.details.get("null_model") or {}
    binomial = null.get("type") == "binomial"
    if binomial:
        statistic = f"{_e(_fmt(evidence.statistic))} of {_e(null['trials'])} that count"
    else:
        statistic = _e(_fmt(evidence.statistic))
    pairs = [
        ("Key type", _e(evidence.scheme)),
        ("What “innocent” means here", _e(evidence.null_hypothesis)),
        (
            "Matches on the key" if binomial else "Score on the key",
            f"{statistic} <span class='note small'>({_e(evidence.statistic_name)})</span>",
        ),
    ]
    if binomial:
        pairs.append(("Matches expected by luck", _e(_count(null["trials"] * null["rate"]))))
    pairs += [
        (
            "Chance of this by luck",
            _e(f"{evidence.p_value:.4g}") + ("" if evidence.exact else " <b>(approximate; see notes)</b>"),
        ),
        ("Smallest chance this test can show", _smallest_cell(evidence)),
        ("Threshold for “stolen”", f"α = {_e(_fmt(evidence.alpha))}"),
        ("Decision", f"{_e(evidence.verdict)} (p {'≤' if evidence.decision else '>'} α)"),
        ("Questions asked", _e(evidence.queries) + how),
        ("Key fingerprint", f"<code>{_e(evidence.key_digest)}</code>"),
    ]
    shown = _HIDDEN_METRICS | ({"successes", "counted"} if binomial else set())  # "Matches on the key" has them
    for k, v in evidence.metrics.items():
        row = (_metric_name(k), _e(_fmt(v)))
        if k not in shown and row not in pairs:  # the scheme's and the sequential test's measures can coincide
            pairs.append(row)
    return pairs


def _smallest_cell(evidence: Evidence) -> str:
    """The smallest p-value the key and query budget can give: what every answer maximally incriminating gives."""
    smallest = smallest_p(evidence)
    if smallest is None:
        return "not known for this scheme"
    reach = "below α: reachable" if smallest <= evidence.alpha else "<b>above α: the test could never reject</b>"
    return f"{_e(f'{smallest:.3g}')} ({reach}; what a perfect copy would get)"


def _caption(entries: Sequence[tuple[str | None, str]]) -> str:
    """A figure's legend: one line per colour (``None``: a line of text without a colour)."""
    swatch = "<span class='sw' style='background:{}'></span>"
    lines = "".join(f"<span class='key'>{swatch.format(c) if c else ''}{text}</span>" for c, text in entries)
    return f"<figcaption>{lines}</figcaption>"


def _binomial_null_plot(null_model: dict[str, Any], alpha: float) -> list[str]:
    """The suspect's statistic on its exact binomial null distribution, with a caption naming each colour."""
    body = ["<h3>How unusual are the suspect's answers?</h3><figure>" + binomial_null_svg(null_model, alpha)]
    n = null_model["trials"]
    if n:
        critical = binomial_critical_greater(n, null_model["rate"], alpha)
        zone = (
            (
                REGION,
                f"Shaded “stolen” zone: {critical} matches or more, whose chance by luck is at most α = {alpha:g}.",
            )
            if critical is not None
            else (
                None,
                f"No number of matches out of {n} has a chance by luck at most α = {alpha:g}: no “stolen” zone.",
            )
        )
        rate = f"{null_model['rate']:.3g}"
        body.append(
            _caption(
                [
                    (
                        BAR,
                        f"Chance curve for an innocent model: the probability of each number of matches "
                        f"(Binomial({n}, {rate})).",
                    ),
                    zone,
                    (SUSPECT, f"The suspect: {null_model['observed']} matches."),
                ]
            )
        )
    body.append("</figure>")
    return body


def _calibration_plot(evidence: Evidence, calibration: Any) -> list[str]:
    """The suspect's p-value among the calibration's innocent reference models, and their false-positive rates."""
    plot = calibration_svg(
        calibration.p_values,
        [r.get("kind", "") for r in calibration.references],
        evidence.p_value,
        evidence.alpha,
    )
    rates = "; ".join(
        f"α={f['alpha']:g}: {f['false_positives']}/{f['n']} (95% CI {f['ci95'][0]:.3g}–{f['ci95'][1]:.3g})"
        for f in evidence.details.get("calibration", {}).get("false_positive_rates", [])
    )
    return [
        "<h3>The suspect among innocent reference models</h3><figure>" + plot,
        _caption(
            [
                (
                    DOT,
                    "Each dot: an innocent model verified with the same key (−log10 of its p-value, right is "
                    "stronger evidence).",
                ),
                (REGION, "Shaded “stolen” zone: p ≤ α."),
                (SUSPECT, "The suspect."),
                (None, f"Innocent models called stolen: {_e(rates)}."),
            ]
        )
        + "</figure>",
    ]


def _combined_section(c: dict[str, Any]) -> str:
    rows = "".join(
        f"<tr><td>{_e(k['scheme'])}</td><td><code>{_e(k['key_digest'][:16])}…</code></td>"
        f"<td>{k['p_value']:.4g}</td><td>{adj:.4g}</td></tr>"
        for k, adj in zip(c["keys"], c["holm_adjusted"])
    )
    return (
        f"<h2>Combined evidence ({_e(c['method'])} decides)</h2><p>{_e(c['null_hypothesis'])}</p>"
        + (f"<p>{_e(c['reason'])}</p>" if c.get("reason") else "")
        + "<table><tr><th>Key type</th><th>Key fingerprint</th><th>Chance of this by luck</th>"
        + f"<th>Adjusted for testing several keys</th></tr>{rows}</table>"
        + _rows(
            [
                ("All keys together, Fisher's method", _e(f"{c['fisher_p_value']:.4g}")),
                ("All keys together, Holm's method", _e(f"{min(c['holm_adjusted']):.4g}")),
                ("Verdict", _e(c["verdict"])),
            ]
        )
        + "".join(f"<p class='note small'>{_e(n)}</p>" for n in c.get("notes", []))
    )


def _transcript_section(t: dict[str, Any]) -> str:
    return (
        "<h2>Record of the answers</h2>"
        + _rows(
            [
                ("File", _e(t.get("path") or "(not saved)")),
                ("Lines", _e(t["lines"])),
                ("Answers on record", _e(t["answers_on_record"])),
                ("Answers replayed from the record in this session", _e(t["replayed_this_session"])),
                ("Errors of the suspect on record", _e(t["errors"])),
                ("Head hash (commits to the whole record)", f"<code>{_e(t['head'])}</code>"),
                ("How the hashes are computed", _e(t["hash_rule"])),
            ]
        )
        + "<p class='small'>To check the record: "
        "<code>python -m copycatch.verification.transcript transcript.jsonl</code> recomputes every hash; its head "
        "must equal the head above (also listed, with every line's hash, in <code>evidence.json</code>). With the "
        "key, <code>copycatch verify --key KEY --suspect SUSPECT --transcript transcript.jsonl --offline</code> "
        "recomputes the evidence from the recorded answers without asking the suspect anything.</p>"
    )


def _signer_section(signer: dict[str, Any]) -> str:
    return (
        "<h2>Signature</h2>"
        + _rows(
            [
                ("Algorithm", _e(signer["algorithm"])),
                ("Owner's public key (sha256)", f"<code>{_e(signer['public_key_sha256'])}</code>"),
                ("Signature file", _e(signer["signature_file"])),
            ]
        )
        + f"<p class='small'>This page is a rendering; <code>evidence.json</code> is the signed record. To check it "
        f"with the owner's public key alone: <code>{_e(signer['how_to_check'])}</code>.</p>"
    )


_SUSPECT_FIELDS = {"num_classes": "Number of classes", "output_kind": "Answers given as", "input_shape": "Input shape"}


def _fingerprint_section(suspect: dict[str, Any]) -> str:
    return "<h2>Suspect fingerprint</h2>" + _rows(
        [
            (
                _SUSPECT_FIELDS.get(k) or k.replace("_", " ").capitalize(),
                f"<code>{_e(json.dumps(v) if isinstance(v, (dict, list)) else v)}</code>",
            )
            for k, v in suspect.items()
        ]
    )


def _software_section(env: dict[str, Any]) -> str:
    return "<h2>Software</h2>" + _rows(
        [("copycatch", _e(env["copycatch"])), ("Python", _e(env["python"])), ("Platform", _e(env["platform"]))]
        + [(k, _e(v)) for k, v in env["packages"].items()]
    )


def _glossary_section(run: Any) -> str:
    metrics = dict.fromkeys(k for e in run.evidences for k in e.metrics if k not in _HIDDEN_METRICS)
    entries = list(_GLOSSARY.items()) + [
        (_metric_name(k), (f"metrics.{k}", "a measure the scheme reports beside its test.")) for k in metrics
    ]
    items = "".join(
        f"<dt>{_e(plain)}</dt><dd><span class='tech'>Technical name: {_e(technical)}.</span> {_e(meaning)}</dd>"
        for plain, (technical, meaning) in entries
    )
    return f"<h2 id='glossary'>Glossary: the words on this page</h2><dl class='glossary'>{items}</dl>"


# ---------------------------------------------------------------------------------------------------------------------
# SVG plots
# ---------------------------------------------------------------------------------------------------------------------

W, H, L, R, T, B = 640, 280, 78, 24, 16, 50  # size and margins: room for tick labels and the axis titles
TICK, LABEL = 11, 12  # font sizes
# Average glyph width per unit of font size, a little above Arial's and DejaVu's digits, so that labels spaced by
# this estimate do not touch in the browser.
GLYPH = 0.64
MIN_REGION = 6.0  # the narrowest the shaded rejection region is drawn, so that a sliver at the edge stays visible
BAR, REGION, REGION_BAR, SUSPECT, DOT, TRAJECTORY = "#8fb3d9", "#fadcc7", "#e8833a", "#c62828", "#4a7ab5", "#2e5d9f"


def _text_width(text: str, size: float) -> float:
    return len(text) * size * GLYPH


class _Axes:
    def __init__(self, x0: float, x1: float, y0: float, y1: float):
        self.x0, self.x1 = x0, x1 if x1 > x0 else x0 + 1
        self.y0, self.y1 = y0, y1 if y1 > y0 else y0 + 1

    def x(self, v: float) -> float:
        return L + (v - self.x0) / (self.x1 - self.x0) * (W - L - R)

    def y(self, v: float) -> float:
        return H - B - (v - self.y0) / (self.y1 - self.y0) * (H - T - B)

    def frame(self, xlabel: str, ylabel: str, xticks: Sequence[float], yticks: Sequence[float]) -> list[str]:
        """Axes, tick labels thinned until none touches its neighbour, grid lines and the two axis titles."""
        out = [
            f"<line x1='{L}' y1='{H - B}' x2='{W - R}' y2='{H - B}' stroke='#333'/>",
            f"<line x1='{L}' y1='{T}' x2='{L}' y2='{H - B}' stroke='#333'/>",
        ]
        for v in _spaced(xticks, self.x, lambda v: _text_width(_tick(v), TICK) + 8):
            out.append(
                f"<text x='{self.x(v):.1f}' y='{H - B + 16}' font-size='{TICK}' text-anchor='middle' "
                f"class='tick'>{_tick(v)}</text>"
            )
        for v in _spaced(yticks, self.y, lambda v: TICK + 4):
            out.append(
                f"<text x='{L - 6}' y='{self.y(v) + 4:.1f}' font-size='{TICK}' text-anchor='end' "
                f"class='tick'>{_tick(v)}</text>"
            )
            out.append(f"<line x1='{L}' y1='{self.y(v):.1f}' x2='{W - R}' y2='{self.y(v):.1f}' stroke='#eee'/>")
        out.append(
            f"<text x='{(L + W - R) / 2}' y='{H - 12}' font-size='{LABEL}' text-anchor='middle' "
            f"class='axis-label'>{_e(_clip(xlabel, W - L - R))}</text>"
        )
        if ylabel:
            out.append(
                f"<text x='18' y='{(T + H - B) / 2}' font-size='{LABEL}' text-anchor='middle' class='axis-label' "
                f"transform='rotate(-90 18 {(T + H - B) / 2})'>{_e(_clip(ylabel, H - T - B))}</text>"
            )
        return out


def _spaced(ticks: Sequence[float], pos: Any, room: Any) -> list[float]:
    """Every k-th tick, for the smallest k that leaves each label ``room(v)`` (centred on its position) to itself."""
    for step in range(1, len(ticks) + 1):
        kept = list(ticks[::step])
        if all(abs(pos(b) - pos(a)) >= (room(a) + room(b)) / 2 for a, b in itertools.pairwise(kept)):
            return kept
    return list(ticks[:1])


def _clip(text: str, width: float, size: float = LABEL) -> str:
    """``text``, cut with an ellipsis to fit ``width`` (a statistic's name can be a sentence)."""
    fits = int(width / (size * GLYPH))
    return text if len(text) <= fits else text[: max(fits - 1, 1)] + "…"


class _Labels:
    """Annotations in the plot's top rows: each goes into the first row where it overlaps no label placed before, so
    markers close together (the suspect at the edge of the rejection region) keep labels that can be read."""

    ROW = 15

    def __init__(self) -> None:
        self.placed: list[tuple[int, float, float]] = []  # (row, left, right)

    def add(self, x: float, text: str, colour: str) -> str:
        width = _text_width(text, TICK)
        left = x + 4 if x + 4 + width <= W - R else x - 4 - width  # right of the mark, or left at the right edge
        left = max(left, L + 2.0)
        row = 0
        while any(r == row and left < b + 6 and left + width > a - 6 for r, a, b in self.placed):
            row += 1
        self.placed.append((row, left, left + width))
        return (
            f"<text x='{left:.1f}' y='{T + 12 + row * self.ROW}' font-size='{TICK}' fill='{colour}' class='note-label' "
            f"paint-order='stroke' stroke='#fff' stroke-width='3'>{_e(text)}</text>"
        )


def _tick(v: float) -> str:
    return f"{v:g}" if abs(v) >= 1e-3 or v == 0 else f"{v:.0e}"


def _ticks(lo: float, hi: float, n: int = 6) -> list[float]:
    if hi <= lo:
        return [lo]
    raw = (hi - lo) / n
    mag = 10 ** math.floor(math.log10(raw))
    step = min((m * mag for m in (1, 2, 5, 10) if m * mag >= raw), default=raw)
    start = math.ceil(lo / step) * step
    return [round(start + i * step, 10) for i in range(int((hi - start) / step) + 1)]


def _svg(content: list[str], label: str) -> str:
    return (
        f"<svg xmlns='http://www.w3.org/2000/svg' viewBox='0 0 {W} {H}' role='img' aria-label='{_e(label)}' "
        f"class='plot'>" + "".join(content) + "</svg>"
    )


def _marker(ax: _Axes, value: float, text: str, labels: _Labels) -> list[str]:
    x = ax.x(value)
    return [
        f"<line x1='{x:.1f}' y1='{T}' x2='{x:.1f}' y2='{H - B}' stroke='{SUSPECT}' stroke-width='2' class='observed'/>",
        labels.add(x, text, SUSPECT),
    ]


def _region(left: float, text: str, labels: _Labels) -> list[str]:
    """The rejection region from ``left`` to the plot's right edge, shaded and at least :data:`MIN_REGION` wide."""
    left = min(left, W - R - MIN_REGION)
    return [
        f"<rect x='{left:.1f}' y='{T}' width='{W - R - left:.1f}' height='{H - T - B}' fill='{REGION}' "
        "class='rejection'/>",
        f"<line x1='{left:.1f}' y1='{T}' x2='{left:.1f}' y2='{H - B}' stroke='{REGION_BAR}' stroke-dasharray='4 3'/>",
        labels.add(left, text, "#a04000"),
    ]


def binomial_null_svg(null_model: dict[str, Any], alpha: float) -> str:
    """Bars of Binomial(trials, rate); the rejection region shaded; the observed statistic in red."""
    from scipy import stats as _st  # imported when used: 45 MB of resident memory

    n, q, observed = int(null_model["trials"]), float(null_model["rate"]), int(null_model["observed"])
    if n == 0:
        return "<p class='note'>No query counted toward the statistic: the null distribution is a point at 0.</p>"
    pmf = _st.binom.pmf(range(n + 1), n, q)
    critical = binomial_critical_greater(n, q, alpha)
    # the x range: where the null has its mass, the suspect and the region's start; not 0..n, where a null with a high
    # rate would be a sliver at the right edge
    shown = min(n, max(observed, int(_st.binom.ppf(0.9999, n, q)), critical or 0) + 2)
    first = max(0, min(observed, int(_st.binom.ppf(1e-4, n, q)), critical or n) - 2)
    top = float(pmf.max()) * 1.45  # headroom above the bars for the annotation rows
    ax = _Axes(first - 0.5, shown + 0.5, 0.0, top)
    labels = _Labels()
    content = ax.frame(
        f"matches on the key ({null_model.get('statistic_name', 'statistic')})",
        "probability if innocent",
        [t for t in _ticks(first, shown) if t == int(t)],
        _ticks(0, top, 4),
    )
    marker = _marker(ax, observed, f"suspect: {observed} of {n}", labels)  # placed first: it gets the top row
    if critical is not None:
        content += _region(ax.x(critical - 0.5), f"“stolen” zone: {critical} or more", labels)
    width = max(1.0, (ax.x(1) - ax.x(0)) * 0.8)
    for k in range(first, shown + 1):
        fill = REGION_BAR if critical is not None and k >= critical else BAR
        y = ax.y(float(pmf[k]))
        content.append(
            f"<rect x='{ax.x(k) - width / 2:.1f}' y='{y:.1f}' width='{width:.1f}' "
            f"height='{H - B - y:.1f}' fill='{fill}'/>"
        )
    return _svg(content + marker, f"binomial null with the suspect's statistic {observed}")


def _neglog(p: float) -> float:
    return -math.log10(max(p, 1e-300))


def calibration_svg(reference_p: Sequence[float], kinds: Sequence[str], suspect_p: float, alpha: float) -> str:
    """−log10 p of every innocent reference (dots, jittered by kind) against the suspect's and α."""
    values = [_neglog(p) for p in reference_p]
    top = max([*values, _neglog(suspect_p), _neglog(alpha)]) * 1.1 + 0.5
    ax = _Axes(0.0, top, 0.0, 1.0)
    labels = _Labels()
    content = ax.frame("−log10 p-value (right = stronger evidence)", "", _ticks(0, top), [])
    marker = _marker(ax, _neglog(suspect_p), f"suspect: p = {suspect_p:.3g}", labels)
    content += _region(ax.x(_neglog(alpha)), f"“stolen” zone: p ≤ α = {alpha:g}", labels)
    kind_rows = {k: i for i, k in enumerate(dict.fromkeys(kinds))}
    for v, k in zip(values, kinds):
        row = kind_rows.get(k, 0)
        y = ax.y(0.05 + 0.55 * (row + 0.5) / max(1, len(kind_rows)))  # below the annotation rows
        content.append(
            f"<circle cx='{ax.x(v):.1f}' cy='{y:.1f}' r='4' fill='{DOT}' fill-opacity='0.7' "
            f"class='reference'><title>{_e(k)}</title></circle>"
        )
    return _svg(content + marker, "the suspect's p-value among innocent reference models")


def pvalue_svg(p_value: float, alpha: float) -> str:
    """The p-value and α on a −log10 axis (schemes without a closed-form null and no calibration)."""
    top = max(_neglog(p_value), _neglog(alpha)) * 1.2 + 0.5
    ax = _Axes(0.0, top, 0.0, 1.0)
    labels = _Labels()
    content = ax.frame("−log10 p-value (right = stronger evidence)", "", _ticks(0, top), [])
    marker = _marker(ax, _neglog(p_value), f"suspect: p = {p_value:.3g}", labels)
    content += _region(ax.x(_neglog(alpha)), f"“stolen” zone: p ≤ α = {alpha:g}", labels)
    return _svg(content + marker, "the suspect's p-value against alpha")


def trajectory_svg(seq: dict[str, Any]) -> str:
    """log10 of the running maximum e-value against queries; above the early-rejection threshold shaded."""
    traj = seq["trajectory"]
    xs = [0] + [int(s["queried"]) for s in traj]
    ys = [0.0] + [math.log10(max(float(s["max_e_value"]), 1e-300)) for s in traj]
    threshold = -math.log10(seq["early_threshold"])
    top = max(max(ys), threshold) * 1.35 + 0.5  # headroom for the annotation row
    ax = _Axes(0.0, max(xs) or 1, min(0.0, min(ys)), top)
    labels = _Labels()
    content = ax.frame("questions asked", "log10 running max e-value", _ticks(0, max(xs) or 1), _ticks(ax.y0, top, 4))
    t = min(ax.y(threshold), H - B - MIN_REGION)
    content.append(
        f"<rect x='{L}' y='{T}' width='{W - R - L}' height='{t - T:.1f}' fill='{REGION}' class='rejection'/>"
    )
    content.append(f"<line x1='{L}' y1='{t:.1f}' x2='{W - R}' y2='{t:.1f}' stroke='{SUSPECT}' stroke-dasharray='5 4'/>")
    bound = 1 / seq["early_threshold"]
    bound_text = f"{bound:,.0f}" if bound < 1e6 else f"{bound:.3g}"
    content.append(labels.add(L, f"“stolen” zone: e-value ≥ {bound_text}", "#a04000"))
    points = " ".join(f"{ax.x(x):.1f},{ax.y(y):.1f}" for x, y in zip(xs, ys))
    content.append(f"<polyline points='{points}' fill='none' stroke='{TRAJECTORY}' stroke-width='2'/>")
    for x, y in zip(xs[1:], ys[1:]):
        content.append(f"<circle cx='{ax.x(x):.1f}' cy='{ax.y(y):.1f}' r='3' fill='{TRAJECTORY}'/>")
    return _svg(content, "sequential e-value path")
