"""The shipped reader's card figures: a reader adapter against the bare model (a fresh install has
no parent reader to compare with), on its round's held-out records and 10 oracle development
questions an article, then shipped into ``chatlm/adapters/reader`` with those figures.

    CHATLM_DATA_DIR=/tmp/reader .venv/bin/python bench/reader_card.py reader-v2 --earlier-seconds 1977

``--earlier-seconds``: training time of the rounds it continued from (its lineage), for the card.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("name", help="a registered reader adapter (CHATLM_DATA_DIR's registry)")
    p.add_argument("--squad", type=Path, default=ROOT.parent / "shared/data/squad2-dev-sample.json")
    p.add_argument("--earlier-seconds", type=float, default=0.0)
    args = p.parse_args()

    from peft import PeftModel

    from chatlm import compose
    from chatlm.adapters.ship import ship
    from chatlm.config import Settings
    from chatlm.engine import loader
    from chatlm.evaluation import heldout
    from chatlm.evaluation.verdict import judge
    from chatlm.store import db, registry
    from chatlm.training.data import Heldout
    from chatlm.training.reader import HELDOUT
    from chatlm.training.worker import qa_figures

    settings = Settings.from_env()
    sessions = compose.sessions_for(settings)
    with db.transaction(sessions) as s:
        adapter = registry.get_adapter(s, name=args.name)
        run = next(r for r in registry.latest_runs(s, limit=100) if r.adapter_name == args.name)
        row = {"name": adapter.name, "method": adapter.method, "base_model": adapter.base_model,
               "dataset_hash": adapter.dataset_hash, "hyperparams": {**adapter.hyperparams, "parent": None}}
        path, old = adapter.path, dict(adapter.metrics)
    lines = (Path(settings.data_dir) / "training" / f"run-{run.id}.jsonl").read_text(encoding="utf-8").splitlines()
    held = [json.loads(x) for x in lines[-HELDOUT:]]  # a reader round writes its held-out records last
    loaded = loader.load(settings.model, Path(settings.data_dir), settings.device)
    model = PeftModel.from_pretrained(loaded.model, path, adapter_name="default")
    out = heldout.compare(model, loaded.tokenizer, Heldout(liked=held, prompts=len(held)), method="reader",
                           baseline=None, baseline_name="base")
    qa = qa_figures(settings, args.squad, Path(path), {"baseline": None}, limit=10)
    for key in ("adapter", "baseline"):
        out[key].update(qa.pop(key))
    out.update(qa=qa, train=old["train"], dataset=old["dataset"],
               lineage={"parent": adapter.parent, "seconds": args.earlier_seconds + old["train"]["seconds"]})
    verdict = judge(out)
    out["verdict"] = {"label": verdict.label, "summary": verdict.sentences()}
    ship(Path(path), {**row, "metrics": out})
    print(json.dumps({k: out[k] for k in ("adapter", "baseline", "verdict", "lineage")}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
