"""Reliability fuzzing: the properties of tests/test_fuzz.py (tests/fuzz_corpus.py), minutes per target.

Run from the repository root: ``.venv/bin/python bench/reliability_fuzz.py --minutes 3``. Each
target feeds hypothesis-generated inputs (no example limit, no deadline) to one check: text
extractors must return clean text or refuse with an ``InputError``; ``/v1/chat/completions``
must answer 200, or 400/404 in OpenAI's shape. A failure is any other exception or answer; the
first few are kept with their input. ``outcomes`` counts accepted and refused inputs (HTTP
statuses for the route), to show that the inputs reach both sides. Prints one JSON object and writes it to
``bench/out/reliability_fuzz.json``. The route target serves the bundled model (answers capped
at 2 tokens); its first run converts the GGUF into ``--model-cache`` (about 30 s).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import fuzz_corpus as fz  # noqa: E402  (bench/, this script's folder)
import hypothesis  # noqa: E402
from hypothesis import HealthCheck, Phase, given  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

OUT = ROOT / "bench" / "out" / "reliability_fuzz.json"
BATCH = 500
"""Examples per hypothesis run; runs repeat (with fresh randomness) until the target's time is up."""
KEPT_FAILURES = 5
SLOW_S = 5.0
"""An example slower than this is counted as slow: the closest a fuzz run gets to a hang."""


Target = tuple[st.SearchStrategy[Any], Callable[[Any], Any]]


def targets() -> dict[str, Target]:
    """Name -> (inputs, check) for the targets that need no setup; ``route`` is built in main."""
    return {
        "parse_bytes": (st.tuples(fz.file_bytes, st.sampled_from(fz.TEXT_TYPES)),
                        lambda x: fz.check_parse_bytes(x[0], "file" + x[1])),
        "parse_bytes_pdf": (fz.damaged_pdf, lambda data: fz.check_parse_bytes(data, "doc.pdf")),
        "parse_text": (fz.any_text, fz.check_parse_text),
        "decode_text": (fz.file_bytes, fz.check_decode_text),
        "html": (fz.hostile_html, fz.check_html),
        "request_model": (fz.request_body | fz.valid_request | fz.near_valid_request | fz.json_values,
                          fz.check_request_model),
    }


def route_target(stack: ExitStack, model_cache: Path, data_dir: Path) -> Target:
    """POST /v1/chat/completions on the real app over the bundled model (loaded before timing)."""
    from chatlm.engine import loader
    from chatlm.engine.local import LocalBackend

    backend = LocalBackend(loader.load("bundled", model_cache, "cpu"))
    stack.callback(backend.close)
    client = fz.api_client(backend, data_dir)
    return fz.raw_bodies(backend.model_id), lambda body: fz.check_route(client, body)


def fuzz(strategy: st.SearchStrategy[Any], check: Callable[[Any], Any], seconds: float) -> dict[str, Any]:
    """Run ``check`` on generated inputs for ``seconds``; failures are counted, not raised, so that
    one bug does not end the run."""
    stats: dict[str, Any] = {"examples": 0, "failures": 0, "outcomes": {}, "slow": 0, "slowest_s": 0.0,
                             "failure_samples": []}
    started = time.monotonic()
    deadline = started + seconds

    @hypothesis.settings(max_examples=BATCH, deadline=None, database=None, phases=[Phase.generate],
                         suppress_health_check=list(HealthCheck))
    @given(value=strategy)
    def run(value: Any) -> None:
        if time.monotonic() > deadline:
            return
        t = time.perf_counter()
        try:
            result = check(value)
            outcome = f"HTTP {result}" if type(result) is int else "accepted" if result else "refused"
            stats["outcomes"][outcome] = stats["outcomes"].get(outcome, 0) + 1
        except Exception as exc:  # the point is to catch everything
            stats["failures"] += 1
            if len(stats["failure_samples"]) < KEPT_FAILURES:
                stats["failure_samples"].append({"error": f"{type(exc).__name__}: {str(exc)[:300]}",
                                                 "input": repr(value)[:300]})
        elapsed = time.perf_counter() - t
        stats["examples"] += 1
        stats["slow"] += elapsed > SLOW_S
        stats["slowest_s"] = round(max(stats["slowest_s"], elapsed), 3)

    while time.monotonic() < deadline:
        run()
    stats["seconds"] = round(time.monotonic() - started, 1)
    stats["examples_per_s"] = round(stats["examples"] / stats["seconds"], 1)
    return stats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=3.0, help="time per target (default 3)")
    parser.add_argument("--targets", nargs="*", help="run only these targets")
    parser.add_argument("--model-cache", type=Path, default=ROOT / ".pytest_cache" / "chatlm-data",
                        help="where the bundled model's converted copy is kept (shared with the tests)")
    args = parser.parse_args()
    results: dict[str, Any] = {"run": {"minutes_per_target": args.minutes,
                                       "hypothesis": hypothesis.__version__}}
    names = args.targets or [*targets(), "route"]
    with ExitStack() as stack:
        chosen = targets()
        if "route" in names:
            data_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="chatlm-fuzz-")))
            chosen["route"] = route_target(stack, args.model_cache, data_dir)
        for name in names:
            strategy, check = chosen[name]
            results[name] = fuzz(strategy, check, args.minutes * 60)
            print(f"{name}: {results[name]['examples']} examples, {results[name]['failures']} failures",
                  file=sys.stderr, flush=True)
    text = json.dumps(results, indent=2)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
