"""Reliability figures, measured rather than asserted: crash cycles (SIGKILL at chosen moments, then
restart), many concurrent visitors, many writers on one SQLite file.

    .venv/bin/python bench/reliability.py crash --cycles 300          # kill -9 / restart cycles
    .venv/bin/python bench/reliability.py load --visitors 100         # UI + API visitors at once
    .venv/bin/python bench/reliability.py writers --threads 16 --writes 500
    .venv/bin/python bench/reliability.py all                          # the three, in that order

Each part prints its JSON on stdout and merges it into ``bench/out/reliability.json`` (``--out``);
progress goes to stderr. Everything runs on 127.0.0.1. See bench/reliability.md for the figures.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parents[1]))

from reliability_common import OUT, REPO, write_json


def _git() -> dict[str, Any]:
    """Which code was measured: HEAD and whether chatlm/ had uncommitted changes (other engineers')."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True).stdout.strip()

    return {"commit": git("rev-parse", "--short", "HEAD"),
            "uncommitted_app_changes": bool(git("status", "--porcelain", "--", "chatlm", "migrations"))}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=OUT / "reliability.json", help="JSON file the figures merge into")
    p.add_argument("--work", type=Path, help="working directory (kept); default: a temporary one, removed")
    p.add_argument("--no-progress", action="store_true", help="no tqdm bars")
    sub = p.add_subparsers(dest="part", required=True)
    for name in ("crash", "all"):
        c = sub.add_parser(name, help="SIGKILL/restart cycles" if name == "crash" else "crash, load, writers")
        c.add_argument("--cycles", type=int, default=300)
        c.add_argument("--model", default="tiny", help="tiny (random weights, fast), bundled, or a CHATLM_MODEL")
        c.add_argument("--launch", choices=["exec", "fork"], default="exec",
                       help="exec: python -m chatlm serve; fork: the same entry point from a preloaded forkserver")
        c.add_argument("--training-share", type=float, default=0.05, help="share of cycles that kill a round")
        c.add_argument("--min-tokens", type=int, default=16)
        c.add_argument("--max-tokens", type=int, default=160)
        c.add_argument("--seed", type=int, default=0)
        c.add_argument("--app-root", type=Path, default=REPO, help="code the server runs (e.g. a git archive)")
        if name == "all":
            _load_args(c)
            _writer_args(c)
    _load_args(sub.add_parser("load", help="concurrent UI and API visitors"))
    _writer_args(sub.add_parser("writers", help="threads writing through ChatService + a progress writer"))
    return p


def _load_args(p: argparse.ArgumentParser) -> None:
    if not any(a.dest == "model" for a in p._actions):
        p.add_argument("--model", default="tiny", help="tiny (random weights, fast), bundled, or a CHATLM_MODEL")
    p.add_argument("--visitors", type=int, default=100)
    p.add_argument("--requests", type=int, default=3, help="requests per visitor")
    p.add_argument("--max-new", type=int, default=8, help="new tokens per request")
    p.add_argument("--time-limit", type=float, default=300, help="seconds the whole run may take")


def _writer_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--threads", type=int, default=16)
    p.add_argument("--writes", type=int, default=500, help="writes per thread")
    p.add_argument("--progress-interval", type=float, default=0.005, help="seconds between progress rows")
    p.add_argument("--writers-time-limit", type=float, default=600, help="no write starts after this many seconds")
    p.add_argument("--no-retrieval", action="store_true",
                   help="a library that opens no second session (isolates the store from the pool bug)")


def crash(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    from reliability_crash import CrashConfig, run

    cfg = CrashConfig(cycles=args.cycles, model=args.model, launch=args.launch, training_share=args.training_share,
                      min_tokens=args.min_tokens, max_tokens=args.max_tokens, seed=args.seed, work=work / "crash",
                      app_root=args.app_root.resolve(), progress=not args.no_progress)
    return run(cfg)


def load(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    from reliability_load import LoadConfig, run

    cfg = LoadConfig(visitors=args.visitors, requests=args.requests, max_new=args.max_new,
                     time_limit=args.time_limit, model=args.model, work=work / "load",
                     progress=not args.no_progress)
    return run(cfg)


def writers(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    from reliability_writers import WritersConfig, run

    cfg = WritersConfig(threads=args.threads, writes=args.writes, progress_interval=args.progress_interval,
                        time_limit=args.writers_time_limit, no_retrieval=args.no_retrieval,
                        work=work / "writers" / ("no-retrieval" if args.no_retrieval else "service"),
                        progress=not args.no_progress)
    return run(cfg)


PARTS = {"crash": crash, "load": load, "writers": writers}


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    work = args.work or Path(tempfile.mkdtemp(prefix="chatlm-reliability-"))
    work.mkdir(parents=True, exist_ok=True)
    names = list(PARTS) if args.part == "all" else [args.part]
    results: dict[str, Any] = {}
    try:
        for name in names:
            result = {"code": _git(), **PARTS[name](args, work)}
            result["command"] = " ".join(["bench/reliability.py", *(argv if argv is not None else sys.argv[1:])])
            key = f"{name}_no_retrieval" if name == "writers" and args.no_retrieval else name
            write_json(key, result, args.out)
            results[key] = result
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(results if len(results) > 1 else next(iter(results.values())), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
