"""``python -m chatlm.adapters.ship NAME``: copy a registered reader adapter into ``chatlm/adapters/reader``.

The weights are stored in float16 (half the size; the served model casts them back to its own
dtype when it loads them), with what made them in ``training.json`` (hyperparameters, the
round's figures, the dataset's hash and mix), which ``register_shipped_reader`` puts in the
registry of every fresh install. The card (``README.md``) is written by hand beside them.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from chatlm.adapters import SHIPPED_READER


def ship(source: Path, row: dict, target: Path = SHIPPED_READER) -> Path:
    """Write ``source``'s adapter into ``target`` in float16, with ``training.json`` from ``row``."""
    from safetensors.torch import load_file, save_file

    target.mkdir(parents=True, exist_ok=True)
    weights = load_file(str(source / "adapter_model.safetensors"))
    save_file({k: v.half().contiguous() for k, v in weights.items()}, str(target / "adapter_model.safetensors"))
    config = json.loads((source / "adapter_config.json").read_text(encoding="utf-8"))
    config["base_model_name_or_path"] = "HuggingFaceTB/SmolLM2-135M-Instruct"
    (target / "adapter_config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    (target / "training.json").write_text(json.dumps(row, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return target


def main(argv: list[str] | None = None) -> int:
    from chatlm.config import Settings
    from chatlm.store import db, registry

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("name", help="a registered adapter of method reader (CHATLM_DATA_DIR's registry)")
    args = p.parse_args(argv)
    settings = Settings.from_env()
    engine = db.make_engine(settings.db_url)
    try:
        with db.transaction(db.make_sessionmaker(engine)) as s:
            adapter = registry.get_adapter(s, name=args.name)
            row = {"name": adapter.name, "method": adapter.method, "base_model": adapter.base_model,
                   "dataset_hash": adapter.dataset_hash, "hyperparams": adapter.hyperparams,
                   "metrics": adapter.metrics}
            source = Path(adapter.path)
    finally:
        engine.dispose()
    if row["method"] != "reader":
        raise SystemExit(f"error: {args.name} is a {row['method']} adapter, not a reader")
    target = ship(source, row)
    for f in sorted(target.iterdir()):
        print(f"{f.stat().st_size / 1e6:7.2f} MB  {f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
