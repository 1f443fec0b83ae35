"""Speed of LSTM/GRU layers: lstminfer against its peers, measured in the same run.

    pytest benchmarks/ --benchmark-json=bench.json      # everything (~15 min)
    pytest benchmarks/ -k "H64 and stream" --benchmark-json=bench.json
    python benchmarks/report.py bench.json               # Markdown table (+ PNG)

Each benchmark stores its case in ``extra_info`` (op, hidden, config, peer,
flops) so that ``report.py`` can group peers and compute ratios against
onnxruntime with one thread. The pure-NumPy reference runs only where it
finishes in reasonable time (streaming, and sequences up to H=128).
"""
from __future__ import annotations

import pytest

from peers import CONFIGS, HIDDEN_SIZES, PEERS, Case, make_runner, measure

CASES = [Case(op, H, config) for op in ("LSTM", "GRU") for config in CONFIGS for H in HIDDEN_SIZES]


def _too_slow(peer: str, case: Case) -> bool:
    if peer == "lstminfer-reference":
        return case.config == "batch" or (case.config == "seq" and case.hidden > 128)
    if peer.endswith("-2t"):  # threads=2 only where it is expected to pay
        return case.config == "stream" or case.hidden < 256
    return False


PARAMS = [pytest.param(peer, case, id=f"{case.name}-{peer}")
          for case in CASES for peer in PEERS if not _too_slow(peer, case)]


@pytest.mark.parametrize("peer,case", PARAMS)
def test_recurrent_layer(benchmark, peer, case):
    try:
        run = make_runner(peer, case)
    except ImportError as err:  # e.g. torch not installed: that peer is simply absent
        pytest.skip(f"{peer} unavailable: {err}")
    measure(benchmark, run, case, peer)
