"""The evidence record of a verification: ``evidence.json`` for machines, ``report.html`` for people.

``copycatch verify --report DIR`` writes, beside ``DIR/transcript.jsonl``:

* ``evidence.json`` (format ``copycatch.evidence/1``): for each key the scheme, the null hypothesis in words,
  the statistic, the p-value (and whether it is exact), the smallest p-value the key and query budget can give
  (above α, the test could never have rejected, and the evidence says so), α, the decision, the queries used and
  the key digest;
  the combined evidence when there are several keys; the suspect's fingerprint; the package and dependency
  versions; the settings and command line; and the query transcript's hash chain (every line's hash and the
  head), so the JSON commits to every answer the suspect gave;
* ``report.html``: the same for a reader — the verdict, what was tested in words, a plot of the suspect's
  statistic against its null distribution (the exact binomial null where the scheme has one; the reference
  innocent models of a calibration where one exists), the sequential test's e-value path, and how to check
  the transcript. The plots are inline SVG drawn here: the page is one self-contained file, no plotting
  library needed.

``--sign-with owner.key`` names the owner's public key in ``evidence.json`` (``signer``) and signs it and the
transcript (detached ``.sig`` files; :mod:`copycatch.verification.signed_evidence`).
"""

from __future__ import annotations

import datetime as _dt
import html
import importlib.metadata
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
.verdict{font-size:1.4em;font-weight:700;padding:.5em .8em;border-radius:6px;display:inline-block}
.stolen{background:#fde2e1;color:#8a1c17}.clear{background:#e3f4e4;color:#1e5b23}
table{border-collapse:collapse;margin:.5em 0;width:100%}td,th{border-bottom:1px solid #eee;padding:.25em .5em;
text-align:left;vertical-align:top}th{width:30%;color:#555;font-weight:600}code,.mono{font-family:ui-monospace,
Menlo,Consolas,monospace;font-size:.9em;word-break:break-all}.note{color:#555}.small{font-size:.85em}
svg{max-width:100%;height:auto;background:#fff}.warn{background:#fff4e5;border-left:4px solid #e65100;
padding:.5em .8em}
"""


def _e(v: Any) -> str:
    return html.escape(str(v))


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def _rows(pairs: Sequence[tuple[str, Any]]) -> str:
    return "<table>" + "".join(f"<tr><th>{_e(k)}</th><td>{v}</td></tr>" for k, v in pairs) + "</table>"


def render_html(doc: dict[str, Any], run: Any) -> str:
    stolen = bool(doc["decision"])
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>copycatch evidence: {_e(doc['verdict'])}</title><style>{_CSS}</style></head><body>",
        "<h1>Ownership verification</h1>",
        f"<p class='note'>Written {_e(doc['created'])} by copycatch {_e(__version__)}.</p>",
        f"<div class='verdict {'stolen' if stolen else 'clear'}'>Verdict: {_e(doc['verdict'].upper())}</div>",
        f"<p>At significance level α = {_e(_fmt(doc['alpha']))}, the evidence "
        + (
            "<b>rejects</b> the null hypothesis that the suspect is independent of the owner's key."
            if stolen
            else "<b>does not reject</b> the null hypothesis that the suspect is independent of the "
            "owner's key (absence of evidence is not evidence of innocence)."
        )
        + "</p>",
        _rows(
            [
                ("suspect", _suspect_line(doc["suspect"])),
                ("p-value", _e(_fmt(doc["p_value"]))),
                ("queries used", _e(doc["queries_used"])),
                ("transcript head", f"<code>{_e(doc['transcript']['head'])}</code>"),
            ]
        ),
    ]
    calibrations = getattr(run, "calibrations", {})
    for i, (item, evidence) in enumerate(zip(doc["evidence"], run.evidences)):
        parts.append(_evidence_section(i, item, evidence, calibrations.get(evidence.key_digest)))
    if doc.get("combined"):
        parts.append(_combined_section(doc["combined"]))
    parts.append(_transcript_section(doc["transcript"]))
    if doc.get("signer"):
        parts.append(_signer_section(doc["signer"]))
    parts.append(
        "<h2>Suspect fingerprint</h2>"
        + _rows(
            [
                (k, f"<code>{_e(json.dumps(v) if isinstance(v, (dict, list)) else v)}</code>")
                for k, v in doc["suspect"].items()
            ]
        )
    )
    env = doc["environment"]
    parts.append(
        "<h2>Software</h2>"
        + _rows(
            [("copycatch", _e(env["copycatch"])), ("python", _e(env["python"])), ("platform", _e(env["platform"]))]
            + [(k, _e(v)) for k, v in env["packages"].items()]
        )
    )
    if doc.get("command"):
        parts.append(f"<h2>Command</h2><p><code>{_e(' '.join(doc['command']))}</code></p>")
    parts.append("</body></html>")
    return "\n".join(parts)


def _suspect_line(s: dict[str, Any]) -> str:
    digest = s.get("sha256") or s.get("source_sha256") or s.get("info_sha256") or s.get("weights_sha256")
    line = f"{_e(s.get('identity', '?'))} <span class='note'>({_e(s.get('kind', '?'))})</span>"
    if digest:
        line += f"<br><code class='small'>sha256 {_e(digest)}</code>"
    return line


def _evidence_section(i: int, item: dict[str, Any], evidence: Evidence, calibration: Any) -> str:
    seq = evidence.details.get("sequential") or {}
    body = [f"<h2>Evidence {i + 1}: {_e(evidence.scheme)}</h2>", _rows(_evidence_rows(evidence, seq))]
    smallest = evidence.metrics.get("smallest_attainable_p")
    if smallest is not None and smallest > evidence.alpha:
        body.append(
            f"<p class='warn'>This test could never have rejected: the smallest p-value this key and query budget "
            f"can give is {_e(f'{smallest:.3g}')}, above α = {_e(_fmt(evidence.alpha))}, so the verdict is "
            "“not stolen” whatever the suspect answered.</p>"
        )
    null_model = evidence.details.get("null_model")
    if null_model and null_model.get("type") == "binomial":
        body += _binomial_null_plot(null_model, evidence.alpha)
    if calibration is not None:
        body += _calibration_plot(evidence, calibration)
    if not null_model and calibration is None:
        body.append(pvalue_svg(evidence.p_value, evidence.alpha))
        body.append(
            "<p class='note small'>This scheme's null distribution is not binomial; run <code>copycatch "
            "calibrate</code> to compare the suspect with innocent reference models here.</p>"
        )
    if seq.get("used") and seq.get("trajectory"):
        body.append("<h3>Sequential test</h3>" + trajectory_svg(seq))
        body.append(
            f"<p class='note small'>The always-valid e-value after each batch of {seq['batch_size']} "
            f"queries; crossing the dashed line (1/(w·α), w = {seq['early_share']:g}) proves theft at any "
            f"stopping time. {seq.get('queries_saved', 0)} queries were saved.</p>"
        )
    if evidence.notes:
        body.append("<ul class='note small'>" + "".join(f"<li>{_e(n)}</li>" for n in evidence.notes) + "</ul>")
    return "\n".join(body)


def _evidence_rows(evidence: Evidence, seq: dict[str, Any]) -> list[tuple[str, str]]:
    """The table of one key's evidence: what was tested, the result, and the scheme's metrics."""
    if seq.get("used"):
        how = f" of {_e(evidence.metrics.get('key_size'))} (sequential; stopped: {_e(seq.get('stop_reason'))})"
    else:
        how = " (fixed test on the whole key)"
    pairs = [
        ("scheme", _e(evidence.scheme)),
        ("null hypothesis", _e(evidence.null_hypothesis)),
        ("statistic", f"{_e(evidence.statistic_name)} = {_e(_fmt(evidence.statistic))}"),
        ("p-value", _e(f"{evidence.p_value:.4g}") + ("" if evidence.exact else " <b>(approximate; see notes)</b>")),
        ("smallest attainable p-value", _smallest_cell(evidence)),
        ("α", _e(_fmt(evidence.alpha))),
        ("decision", _e(evidence.verdict)),
        ("queries used", _e(evidence.queries) + how),
        ("key digest", f"<code>{_e(evidence.key_digest)}</code>"),
    ]
    hidden = {"key_size", "stopped", "smallest_attainable_p"}
    pairs += [(k, _e(_fmt(v))) for k, v in evidence.metrics.items() if k not in hidden]
    return pairs


def _smallest_cell(evidence: Evidence) -> str:
    """The smallest p-value the key and query budget can give: what every answer maximally incriminating gives."""
    smallest = evidence.metrics.get("smallest_attainable_p")
    if smallest is None:
        return "not known for this scheme"
    reach = "reachable" if smallest <= evidence.alpha else "<b>above α: the test could never reject</b>"
    return f"{_e(f'{smallest:.3g}')} ({reach}; every answer maximally incriminating)"


def _binomial_null_plot(null_model: dict[str, Any], alpha: float) -> list[str]:
    """The suspect's statistic on its exact binomial null distribution, and (if anything was counted) a caption."""
    body = ["<h3>The suspect against the null distribution</h3>" + binomial_null_svg(null_model, alpha)]
    if null_model["trials"]:
        body.append(
            f"<p class='note small'>Bars: the probability of each value of the statistic for a model "
            f"independent of the key (Binomial({null_model['trials']}, {null_model['rate']:.3g})); "
            f"shaded: values that are significant at α. The red line is the suspect.</p>"
        )
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
        "<h3>The suspect among innocent reference models</h3>" + plot,
        f"<p class='note small'>Each dot is an innocent model verified with the same key (−log10 of its "
        f"p-value); the red line is the suspect. Innocent models called stolen: {_e(rates)}.</p>",
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
        + f"<table><tr><th>scheme</th><th>key</th><th>p-value</th><th>Holm-adjusted</th></tr>{rows}</table>"
        + _rows(
            [
                ("Fisher combined p-value", _e(f"{c['fisher_p_value']:.4g}")),
                ("Holm global p-value", _e(f"{min(c['holm_adjusted']):.4g}")),
                ("verdict", _e(c["verdict"])),
            ]
        )
        + "".join(f"<p class='note small'>{_e(n)}</p>" for n in c.get("notes", []))
    )


def _transcript_section(t: dict[str, Any]) -> str:
    return (
        "<h2>Query transcript</h2>"
        + _rows(
            [
                ("file", _e(t.get("path") or "(not saved)")),
                ("lines", _e(t["lines"])),
                ("answers on record", _e(t["answers_on_record"])),
                ("replayed in this session", _e(t["replayed_this_session"])),
                ("suspect errors on record", _e(t["errors"])),
                ("head hash", f"<code>{_e(t['head'])}</code>"),
                ("hash rule", _e(t["hash_rule"])),
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
                ("algorithm", _e(signer["algorithm"])),
                ("owner's public key (sha256)", f"<code>{_e(signer['public_key_sha256'])}</code>"),
                ("signature", _e(signer["signature_file"])),
            ]
        )
        + f"<p class='small'>This page is a rendering; <code>evidence.json</code> is the signed record. To check it "
        f"with the owner's public key alone: <code>{_e(signer['how_to_check'])}</code>.</p>"
    )


# ---------------------------------------------------------------------------------------------------------------------
# SVG plots
# ---------------------------------------------------------------------------------------------------------------------

W, H, L, R, T, B = 640, 260, 60, 20, 20, 45  # size and margins


class _Axes:
    def __init__(self, x0: float, x1: float, y0: float, y1: float):
        self.x0, self.x1 = x0, x1 if x1 > x0 else x0 + 1
        self.y0, self.y1 = y0, y1 if y1 > y0 else y0 + 1

    def x(self, v: float) -> float:
        return L + (v - self.x0) / (self.x1 - self.x0) * (W - L - R)

    def y(self, v: float) -> float:
        return H - B - (v - self.y0) / (self.y1 - self.y0) * (H - T - B)

    def frame(self, xlabel: str, ylabel: str, xticks: Sequence[float], yticks: Sequence[float]) -> list[str]:
        out = [
            f"<line x1='{L}' y1='{H - B}' x2='{W - R}' y2='{H - B}' stroke='#333'/>",
            f"<line x1='{L}' y1='{T}' x2='{L}' y2='{H - B}' stroke='#333'/>",
        ]
        for v in xticks:
            out.append(
                f"<text x='{self.x(v):.1f}' y='{H - B + 15}' font-size='11' text-anchor='middle'>{_tick(v)}</text>"
            )
        for v in yticks:
            out.append(f"<text x='{L - 6}' y='{self.y(v) + 4:.1f}' font-size='11' text-anchor='end'>{_tick(v)}</text>")
            out.append(f"<line x1='{L}' y1='{self.y(v):.1f}' x2='{W - R}' y2='{self.y(v):.1f}' stroke='#eee'/>")
        out.append(f"<text x='{(L + W - R) / 2}' y='{H - 8}' font-size='12' text-anchor='middle'>{_e(xlabel)}</text>")
        out.append(
            f"<text x='14' y='{(T + H - B) / 2}' font-size='12' text-anchor='middle' "
            f"transform='rotate(-90 14 {(T + H - B) / 2})'>{_e(ylabel)}</text>"
        )
        return out


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
        f"<svg xmlns='http://www.w3.org/2000/svg' viewBox='0 0 {W} {H}' role='img' aria-label='{_e(label)}'>"
        + "".join(content)
        + "</svg>"
    )


def _marker(ax: _Axes, value: float, text: str, color: str = "#c62828") -> list[str]:
    x = ax.x(value)
    return [
        f"<line x1='{x:.1f}' y1='{T}' x2='{x:.1f}' y2='{H - B}' stroke='{color}' stroke-width='2' class='observed'/>",
        f"<text x='{min(x + 4, W - R - 150):.1f}' y='{T + 12}' font-size='11' fill='{color}'>{_e(text)}</text>",
    ]


def binomial_null_svg(null_model: dict[str, Any], alpha: float) -> str:
    """Bars of Binomial(trials, rate); the significant region shaded; the observed statistic in red."""
    from scipy import stats as _st  # imported when used: 45 MB of resident memory

    n, q, observed = int(null_model["trials"]), float(null_model["rate"]), int(null_model["observed"])
    if n == 0:
        return "<p class='note'>No query counted toward the statistic: the null distribution is a point at 0.</p>"
    pmf = _st.binom.pmf(range(n + 1), n, q)
    critical = binomial_critical_greater(n, q, alpha)
    shown = max(observed, int(_st.binom.ppf(0.9999, n, q)), critical or 0) + 2
    shown = min(n, shown)
    ax = _Axes(-0.5, shown + 0.5, 0.0, float(pmf.max()) * 1.1)
    width = max(1.0, (ax.x(1) - ax.x(0)) * 0.8)
    content = ax.frame(
        str(null_model.get("statistic_name", "statistic")),
        "probability under the null",
        [t for t in _ticks(0, shown) if t == int(t)],
        _ticks(0, float(pmf.max()) * 1.1, 4),
    )
    for k in range(shown + 1):
        fill = "#f4b183" if critical is not None and k >= critical else "#8fb3d9"
        y = ax.y(float(pmf[k]))
        content.append(
            f"<rect x='{ax.x(k) - width / 2:.1f}' y='{y:.1f}' width='{width:.1f}' "
            f"height='{H - B - y:.1f}' fill='{fill}'/>"
        )
    content += _marker(ax, observed, f"suspect: {observed} of {n}")
    return _svg(content, f"binomial null with the suspect's statistic {observed}")


def calibration_svg(reference_p: Sequence[float], kinds: Sequence[str], suspect_p: float, alpha: float) -> str:
    """−log10 p of every innocent reference (dots, jittered by kind) against the suspect's and α."""

    def score(p: float) -> float:
        return -math.log10(max(p, 1e-300))

    values = [score(p) for p in reference_p]
    top = max([*values, score(suspect_p), score(alpha)]) * 1.1 + 0.5
    ax = _Axes(0.0, top, 0.0, 1.0)
    content = ax.frame("−log10 p-value (right = stronger evidence)", "", _ticks(0, top), [])
    kind_rows = {k: i for i, k in enumerate(dict.fromkeys(kinds))}
    for v, k in zip(values, kinds):
        row = kind_rows.get(k, 0)
        y = ax.y(0.15 + 0.7 * (row + 0.5) / max(1, len(kind_rows)))
        content.append(
            f"<circle cx='{ax.x(v):.1f}' cy='{y:.1f}' r='4' fill='#4a7ab5' fill-opacity='0.7' "
            f"class='reference'><title>{_e(k)}</title></circle>"
        )
    a = ax.x(score(alpha))
    content.append(f"<line x1='{a:.1f}' y1='{T}' x2='{a:.1f}' y2='{H - B}' stroke='#555' stroke-dasharray='4 3'/>")
    content.append(f"<text x='{a + 4:.1f}' y='{H - B - 6}' font-size='11' fill='#555'>α = {alpha:g}</text>")
    content += _marker(ax, score(suspect_p), f"suspect: p = {suspect_p:.3g}")
    return _svg(content, "the suspect's p-value among innocent reference models")


def pvalue_svg(p_value: float, alpha: float) -> str:
    """The p-value and α on a −log10 axis (schemes without a closed-form null and no calibration)."""

    def score(p: float) -> float:
        return -math.log10(max(p, 1e-300))

    top = max(score(p_value), score(alpha)) * 1.2 + 0.5
    ax = _Axes(0.0, top, 0.0, 1.0)
    content = ax.frame("−log10 p-value", "", _ticks(0, top), [])
    a = ax.x(score(alpha))
    content.append(f"<rect x='{a:.1f}' y='{T}' width='{W - R - a:.1f}' height='{H - T - B}' fill='#fbe3d6'/>")
    content.append(
        f"<text x='{a + 4:.1f}' y='{H - B - 6}' font-size='11' fill='#555'>significant at α = {alpha:g}</text>"
    )
    content += _marker(ax, score(p_value), f"suspect: p = {p_value:.3g}")
    return _svg(content, "the suspect's p-value against alpha")


def trajectory_svg(seq: dict[str, Any]) -> str:
    """log10 of the running maximum e-value against queries, with the early-rejection threshold."""
    traj = seq["trajectory"]
    xs = [0] + [int(s["queried"]) for s in traj]
    ys = [0.0] + [math.log10(max(float(s["max_e_value"]), 1e-300)) for s in traj]
    threshold = -math.log10(seq["early_threshold"])
    ax = _Axes(0.0, max(xs) or 1, min(0.0, min(ys)), max(max(ys), threshold) * 1.1 + 0.2)
    content = ax.frame("queries", "log10 running max e-value", _ticks(0, max(xs) or 1), _ticks(ax.y0, ax.y1, 4))
    t = ax.y(threshold)
    content.append(f"<line x1='{L}' y1='{t:.1f}' x2='{W - R}' y2='{t:.1f}' stroke='#c62828' stroke-dasharray='5 4'/>")
    points = " ".join(f"{ax.x(x):.1f},{ax.y(y):.1f}" for x, y in zip(xs, ys))
    content.append(f"<polyline points='{points}' fill='none' stroke='#2e5d9f' stroke-width='2'/>")
    for x, y in zip(xs[1:], ys[1:]):
        content.append(f"<circle cx='{ax.x(x):.1f}' cy='{ax.y(y):.1f}' r='3' fill='#2e5d9f'/>")
    return _svg(content, "sequential e-value path")
