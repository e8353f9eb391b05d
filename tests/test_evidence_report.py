"""Evidence record (JSON + HTML with plots), combined evidence over several keys, and offline re-computation."""

import json
import re
import xml.etree.ElementTree as ET

import pytest
import torch

import copycatch as cc
from copycatch.cli.options import EXIT_NOT_STOLEN
from copycatch.core.errors import InvalidArgument
from copycatch.core.evidence import Evidence
from copycatch.core.key import Key
from copycatch.core.stats import fisher_combine, holm_adjust
from copycatch.schemes.margin import MarginWatermark
from copycatch.verification.combine import combine_evidence
from copycatch.verification.report import (
    binomial_null_svg,
    calibration_svg,
    evidence_document,
    pvalue_svg,
    render_html,
    trajectory_svg,
    write_report,
)
from copycatch.verification.session import VerificationRun, verify_suspect
from copycatch.verification.transcript import Transcript, row_hashes


def margin_key(splits, seed):
    scheme = MarginWatermark(n_triggers=30)
    x_u8, true, labels = scheme.make_trigger_set(splits, torch.Generator().manual_seed(seed))
    return Key(
        "margin",
        scheme.params.to_dict(),
        {"trigger_x": x_u8, "trigger_true": true, "trigger_label": labels},
        meta={"num_classes": 4, "input_shape": [1, 8, 8]},
    )


class Copycat(cc.Oracle):
    """Answers the secret label on ``key``'s triggers (a perfect copy of that watermark), the true class elsewhere."""

    def __init__(self, key, fallback):
        super().__init__(4, (1, 8, 8), name="copycat")
        x = key["trigger_x"].float() / 255
        self.secret = dict(zip(row_hashes(x), key["trigger_label"].tolist()))
        self.fallback = fallback
        self.asked = 0

    def _answer(self, x):
        self.asked += len(x)
        fallback = self.fallback(x).argmax(1).tolist()
        labels = [self.secret.get(h, f) for h, f in zip(row_hashes(x), fallback)]
        return torch.nn.functional.one_hot(torch.tensor(labels), 4).float()


@pytest.fixture(scope="module")
def keys(splits, tmp_path_factory):
    folder = tmp_path_factory.mktemp("keys")
    return [margin_key(splits, seed).save(folder / f"k{seed}.cckey") for seed in (1, 2)]


def _svg_ok(svg):
    ET.fromstring(svg)  # well-formed XML, or this raises
    return svg


def test_combined_evidence_uses_fisher_and_holm():
    ev = [Evidence("a", "h", "s", 1, p, 0.01, 10, d * 64) for p, d in [(0.004, "a"), (0.3, "b"), (0.02, "c")]]
    holm = combine_evidence(ev)
    assert holm.holm_adjusted == holm_adjust([0.004, 0.3, 0.02]) and holm.p_value == pytest.approx(0.012)
    assert holm.verdict == "not stolen" and holm.queries == 30
    fisher = combine_evidence(ev, method="fisher")
    assert fisher.p_value == pytest.approx(fisher_combine([0.004, 0.3, 0.02])) and fisher.decision
    assert "do not declare" in fisher.reason and "Holm" in fisher.reason  # Fisher asked for undeclared keys
    declared = combine_evidence(ev, independent=True)
    assert declared.method == "fisher" and "drawn independently" in declared.reason
    with pytest.raises(InvalidArgument, match="twice"):
        combine_evidence([ev[0], ev[0]])
    with pytest.raises(InvalidArgument, match="holm, fisher"):
        combine_evidence(ev, method="stouffer")


def test_report_records_everything_a_second_expert_needs(keys, trained, tmp_path):
    key = Key.load(keys[0])
    suspect = Copycat(key, cc.ModelOracle(trained).query)
    run = verify_suspect(suspect, [keys[0]], transcript=tmp_path / "rep" / "transcript.jsonl")
    paths = write_report(tmp_path / "rep", run, command=["copycatch", "verify", "--key", "k1.cckey"])
    doc = json.loads(paths["json"].read_text())
    for field in (
        "scheme",
        "null_hypothesis",
        "statistic",
        "p_value",
        "alpha",
        "decision",
        "queries_used",
        "key_digest",
        "suspect",
        "environment",
        "transcript",
    ):
        assert field in doc, field
    assert doc["verdict"] == "stolen" and doc["key_digest"] == key.digest
    assert doc["queries_used"] == suspect.asked < 30  # sequential by default
    assert {"torch", "numpy", "scipy"} <= set(doc["environment"]["packages"])
    recorded = [json.loads(line)["hash"] for line in (tmp_path / "rep" / "transcript.jsonl").read_text().splitlines()]
    assert doc["transcript"]["chain"] == recorded and doc["transcript"]["head"] == recorded[-1]
    html = paths["html"].read_text()
    assert "Verdict: STOLEN" in html
    assert MarginWatermark.null_hypothesis[:60] in html.replace("&#x27;", "'")
    svgs = re.findall(r"<svg.*?</svg>", html, re.S)
    assert len(svgs) == 2 and all(_svg_ok(s) for s in svgs)  # null distribution + e-value path
    assert "class='observed'" in svgs[0] and "python -m copycatch.verification.transcript" in html


def test_several_keys_are_combined_in_the_verdict_and_the_report(keys, trained, tmp_path):
    suspect = Copycat(Key.load(keys[0]), cc.ModelOracle(trained).query)
    run = verify_suspect(suspect, keys, alpha=1e-3)
    assert [e.verdict for e in run.evidences] == ["stolen", "not stolen"]
    assert run.combined is not None and run.verdict == "stolen"
    assert run.combined.p_value == pytest.approx(min(1.0, 2 * min(e.p_value for e in run.evidences)))
    doc = evidence_document(run)
    assert (
        doc["combined"]["method"] == "holm"
        and len(doc["evidence"]) == 2
        and doc["key_digest"] == [e.key_digest for e in run.evidences]
    )
    html = render_html(doc, run).replace("&#x27;", "'")
    assert "Combined evidence (holm decides)" in html and "All keys together, Fisher's method" in html
    assert "combined with Holm's method" in html  # the summary at the top says how the keys were combined


def test_offline_recomputes_the_evidence_from_the_transcript_alone(keys, trained, tmp_path):
    key = Key.load(keys[0])
    path = tmp_path / "t.jsonl"
    first = verify_suspect(Copycat(key, cc.ModelOracle(trained).query), [keys[0]], transcript=path, sequential=False)
    before = path.read_bytes()
    again = verify_suspect("anything", [keys[0]], transcript=path, offline=True, sequential=False)
    assert again.evidences[0].p_value == first.evidences[0].p_value and again.queries == 30
    assert path.read_bytes() == before  # checking the record does not write to it
    with pytest.raises(cc.CopycatchError, match="offline"):
        verify_suspect("anything", [keys[1]], transcript=path, offline=True)


def test_cli_offline_check_keeps_the_recorded_head_and_never_overwrites_evidence(capsys, keys, trained, tmp_path):
    from copycatch.cli.main import main

    model = cc.save_model(trained, tmp_path / "m.safetensors")
    rep = tmp_path / "rep"
    code = main(["verify", "--key", str(keys[0]), "--suspect", str(model), "--report", str(rep), "-q"])
    assert code == EXIT_NOT_STOLEN
    head = json.loads((rep / "evidence.json").read_text())["transcript"]["head"]
    capsys.readouterr()
    assert main(["verify", "--key", str(keys[0]), "--suspect", str(model), "--report", str(rep), "--offline"]) == 2
    assert "would overwrite" in capsys.readouterr().err
    assert (
        main(
            [
                "verify",
                "--key",
                str(keys[0]),
                "--suspect",
                str(model),
                "--transcript",
                str(rep / "transcript.jsonl"),
                "--offline",
                "--json",
            ]
        )
        == EXIT_NOT_STOLEN
    )
    again = json.loads(capsys.readouterr().out)
    assert again["transcript"]["head"] == head and again["transcript"]["read_only"]
    assert again["transcript"]["answered_this_session"] == 0


def test_pages_for_schemes_without_a_binomial_null_still_plot_the_p_value(splits):
    evidence = Evidence(
        "dynamarks",
        "distributions differ by chance",
        "eta",
        0.4,
        0.2,
        0.01,
        100,
        "e" * 64,
        exact=False,
        notes=["permutation test with 999 draws"],
    )
    key = margin_key(splits, 3)
    run = VerificationRun([evidence], [key], {"kind": "http", "identity": "http://x"}, Transcript({"kind": "http"}))
    html = render_html(evidence_document(run), run)
    assert "approximate; see notes" in html and "copycatch calibrate" in html and "permutation test" in html
    assert len(re.findall(r"<svg", html)) == 1


def test_svg_plots_are_well_formed_for_edge_cases():
    _svg_ok(binomial_null_svg({"trials": 100, "rate": 1 / 9, "observed": 0, "statistic_name": "hits"}, 1e-3))
    _svg_ok(binomial_null_svg({"trials": 5, "rate": 0.5, "observed": 5}, 1e-3))  # no critical value exists
    assert "point at 0" in binomial_null_svg({"trials": 0, "rate": 0.5, "observed": 0}, 0.01)
    _svg_ok(calibration_svg([1.0, 0.5, 1e-5], ["a", "b", "a"], 1e-300, 1e-3))
    _svg_ok(pvalue_svg(0.0, 0.05))
    _svg_ok(trajectory_svg({"trajectory": [{"queried": 10, "max_e_value": 1.0}], "early_threshold": 2e-4}))


def test_a_scoring_suspect_gets_margins_rank_test_and_the_page_calls_its_p_value_exact(splits, trained, tmp_path):
    key = margin_key(splits, 11)
    run = cc.verify(trained, key, sequential=False, alpha=0.05, report=tmp_path / "report", commitment_checks=False)
    evidence = run.evidences[0]
    assert evidence.statistic_name.startswith("secret label's rank") and evidence.exact
    assert "null_model" not in evidence.details  # the binomial plot would describe another statistic
    page = (tmp_path / "report" / "report.html").read_text()
    assert "p-value is exact" in page and "Score on the key" in page
