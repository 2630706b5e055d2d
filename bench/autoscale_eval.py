"""Benchmark (not a test): autoscale formula evaluation time.

Builds one hour of samples (30 s period) for every metric of a 100-node pool,
parses each conformance-table and published-example formula once, evaluates
each many times, and prints the median and p99 time per evaluation next to
baselines measured in the same run.  Target: median < 1 ms per evaluation.

    cd /work/main && python bench/autoscale_eval.py [--repeat 300]
"""

from __future__ import annotations

import argparse
import pathlib
import random
import statistics
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

from shoal.autoscale import (  # noqa: E402
    METRICS,
    SYNTAX_ERROR,
    TOO_LONG,
    EvaluationInput,
    FormulaError,
    SampleHistory,
    evaluate,
    parse_formula,
)
from tests.autoscale.test_conformance import CASES, EXAMPLES  # noqa: E402

NOW = datetime(2016, 10, 13, 19, 18, 47, 805000, tzinfo=UTC)
NODES = 100
PERIOD_S = 30
SAMPLES_PER_METRIC = 3600 // PERIOD_S


def build_samples(rng: random.Random) -> dict[str, list[tuple[datetime, float]]]:
    """Per-metric histories; node metrics are averages over the 100 nodes."""
    samples: dict[str, list[tuple[datetime, float]]] = {}
    times = [NOW - timedelta(seconds=PERIOD_S * (SAMPLES_PER_METRIC - 1 - i)) for i in range(SAMPLES_PER_METRIC)]
    for name in sorted(METRICS):
        values = []
        for _ in times:
            if name in ("$CurrentDedicatedNodes", "$SampleNodeCount", "$UsableNodeCount"):
                values.append(float(NODES))
            elif name.endswith("Tasks"):
                values.append(float(rng.randint(0, 4 * NODES)))
            else:
                values.append(sum(rng.random() * 100 for _ in range(NODES)) / NODES)
        samples[name] = list(zip(times, values, strict=True))
    return samples


def timed(action: Callable[[], object], repeat: int) -> list[float]:
    """Per-call wall times in ms."""
    clock = time.perf_counter_ns
    durations = []
    for _ in range(repeat):
        start = clock()
        action()
        durations.append((clock() - start) / 1e6)
    return durations


def summary(durations: list[float]) -> tuple[float, float]:
    ordered = sorted(durations)
    return statistics.median(ordered), ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]


def main() -> None:
    options = argparse.ArgumentParser(description=__doc__)
    options.add_argument("--repeat", type=int, default=300)
    repeat = options.parse_args().repeat

    raw = build_samples(random.Random(42))
    prebuilt = {name: SampleHistory.from_pairs(pairs) for name, pairs in raw.items()}
    current = {"$TargetDedicatedNodes": 10.0, "$TargetLowPriorityNodes": 0.0, "$CurrentDedicatedNodes": float(NODES),
               "$CurrentLowPriorityNodes": 0.0, "$PreemptedNodeCount": 0.0, "$TaskSlotsPerNode": 4.0,
               "$NodeDeallocationOption": "requeue"}
    data_raw = EvaluationInput(now=NOW, samples=raw, current=current)
    data_pre = EvaluationInput(now=NOW, samples=prebuilt, current=current)

    trivial = parse_formula("$TargetDedicatedNodes=1;")
    one_metric = [value for _, value in raw["$CPUPercent"]]
    all_values = [value for pairs in raw.values() for _, value in pairs]
    baselines = {
        "trivial formula $TargetDedicatedNodes=1;": summary(timed(lambda: evaluate(trivial, data_raw), repeat * 5)),
        f"sum() of a {len(one_metric)}-float list (one metric)": summary(timed(lambda: sum(one_metric), repeat * 5)),
        f"sum() of a {len(all_values)}-float list (all metrics)": summary(timed(lambda: sum(all_values), repeat * 5)),
    }
    trivial_median = baselines["trivial formula $TargetDedicatedNodes=1;"][0]
    list_median = baselines[f"sum() of a {len(one_metric)}-float list (one metric)"][0]

    rows = []
    for case in EXAMPLES + CASES:
        if case.error in (SYNTAX_ERROR, TOO_LONG):
            continue
        try:
            formula = parse_formula(case.formula)
        except FormulaError:
            continue
        median_raw, p99_raw = summary(timed(lambda f=formula: evaluate(f, data_raw), repeat))
        median_pre, p99_pre = summary(timed(lambda f=formula: evaluate(f, data_pre), repeat))
        rows.append((case.id, median_raw, p99_raw, median_pre, p99_pre))

    print(f"Autoscale evaluation benchmark: {len(METRICS)} metrics x {SAMPLES_PER_METRIC} samples "
          f"({NODES} nodes, {PERIOD_S} s period), {repeat} runs per formula, Python {sys.version.split()[0]}")
    print("\nBaselines (same run)                              median ms     p99 ms")
    for name, (median, p99) in baselines.items():
        print(f"  {name:<46} {median:10.4f} {p99:10.4f}")

    header = f"\n{'formula':<44} {'median ms':>10} {'p99 ms':>9} {'x trivial':>9} {'x sum()':>8} | {'prebuilt med':>12} {'p99':>7}"
    print(header)

    def show(row: tuple) -> None:
        name, median_raw, p99_raw, median_pre, p99_pre = row
        print(f"  {name[:42]:<42} {median_raw:10.4f} {p99_raw:9.4f} {median_raw / trivial_median:9.1f} "
              f"{median_raw / list_median:8.1f} | {median_pre:12.4f} {p99_pre:7.4f}")

    print("published examples:")
    for row in rows[: len(EXAMPLES)]:
        show(row)
    print("slowest 15 conformance formulas:")
    for row in sorted(rows[len(EXAMPLES):], key=lambda r: r[1], reverse=True)[:15]:
        show(row)

    medians = [r[1] for r in rows]
    p99s = [r[2] for r in rows]
    print(f"\nall {len(rows)} formulas (samples passed as (datetime, float) lists, converted per evaluation):")
    print(f"  median of medians {statistics.median(medians):.4f} ms, worst median {max(medians):.4f} ms, "
          f"worst p99 {max(p99s):.4f} ms")
    print(f"  with prebuilt SampleHistory: median of medians {statistics.median(r[3] for r in rows):.4f} ms, "
          f"worst median {max(r[3] for r in rows):.4f} ms")
    verdict = "MET" if max(medians) < 1.0 else "NOT MET"
    print(f"  target (< 1 ms median per evaluation, every formula): {verdict}")


if __name__ == "__main__":
    main()
