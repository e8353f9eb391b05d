"""`copycatch verify`'s exit status from a verification's outcome: stolen, not stolen, or inconclusive when "stolen"
was out of reach — for one key, and for several whose combination (Holm or Fisher) decides."""

from __future__ import annotations

import pytest

from copycatch.cli.commands.verify import exit_status
from copycatch.cli.options import EXIT_INCONCLUSIVE, EXIT_NOT_STOLEN, EXIT_STOLEN
from copycatch.core.evidence import Evidence
from copycatch.core.stats import fisher_combine
from copycatch.verification.combine import combine_evidence
from copycatch.verification.session import VerificationRun


def _run(*pairs, method=None, alpha=1e-3):
    """A run over keys given as (p-value, smallest attainable p-value) pairs."""
    evidences = [
        Evidence("margin", "h0", "hits", 0.0, p, alpha, 30, f"{i:x}" * 64, metrics={"smallest_attainable_p": s})
        for i, (p, s) in enumerate(pairs)
    ]
    combined = combine_evidence(evidences, method=method) if len(evidences) > 1 else None
    return VerificationRun(evidences, [], {}, None, combined=combined)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("pairs", "method", "status"),
    [
        ([(1e-5, 1e-9)], None, EXIT_STOLEN),
        ([(0.4, 1e-9)], None, EXIT_NOT_STOLEN),
        ([(0.4, 0.01)], None, EXIT_INCONCLUSIVE),  # the key could never reach alpha
        ([(0.4, None)], None, EXIT_NOT_STOLEN),  # a scheme that does not state its reach: taken as reachable
        # Holm needs one p-value <= alpha/2: 6e-4 each reach alpha alone, not together
        ([(0.4, 6e-4), (0.5, 6e-4)], "holm", EXIT_INCONCLUSIVE),
        ([(0.4, 4e-4), (0.5, 0.9)], "holm", EXIT_NOT_STOLEN),
        ([(4e-4, 4e-4), (0.5, 0.9)], "holm", EXIT_STOLEN),
        # Fisher pools them: two keys each out of reach alone can reach alpha together
        ([(0.4, 0.005), (0.5, 0.005)], "fisher", EXIT_NOT_STOLEN),
        ([(0.4, 0.05), (0.5, 0.05)], "fisher", EXIT_INCONCLUSIVE),
    ],
)
def test_the_exit_status_is_the_verdict_and_its_reach(pairs, method, status):
    assert exit_status(_run(*pairs, method=method)) == status


def test_the_smallest_attainable_p_value_follows_the_deciding_combination():
    assert _run((0.4, 0.01)).smallest_attainable_p == 0.01
    assert _run((0.4, 6e-4), (0.5, 0.2), method="holm").smallest_attainable_p == pytest.approx(1.2e-3)
    fisher = _run((0.4, 0.005), (0.5, 0.005), method="fisher")
    assert fisher.smallest_attainable_p == pytest.approx(fisher_combine([0.005, 0.005])) and fisher.conclusive
    assert _run((0.4, 0.01), (0.5, None), method="fisher").smallest_attainable_p is None
