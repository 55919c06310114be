"""Start-up benchmark (issue 15): how long ``python -m chatlm ask`` takes to its first token.

Run from the repository root: ``.venv/bin/python bench/startup.py [--runs 3]``. Prints one JSON object.
Each run is a fresh process in a scratch data folder that reuses the test model cache (so "second
start": the GGUF is already dequantised). The first token is the first byte of the answer on stdout
(``ask`` streams it); where the time goes comes from one ``python -X importtime`` run and from the
phases timed in a process of our own (imports, database open with migrations, the imports of the
model's code (transformers' config and modeling modules, which pull in torch.distributed and
torch._dynamo), the model load proper).

``--quantize auto,none`` (the default) times every ``CHATLM_QUANTIZE`` value given, in one sitting,
each in its own scratch data folder; the first start of each (untimed) makes what a second start
reuses (the database, and for int8 the int8 copy of the weights). ``--ab N`` adds N interleaved
rounds of the int8 model load alone, the old way and the new (``INT8_AB``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from train import scratch_data_dir  # noqa: E402

PHASES = """
import time, json
t0 = time.perf_counter()
from chatlm.config import Settings
from chatlm import compose
from chatlm import torch_threads
from chatlm.engine import loader
from chatlm.engine.local import LocalBackend
t1 = time.perf_counter()
torch_threads.one_thread_here()  # as `ask` loads
settings = Settings.from_env()
engine, sessions = compose.open_database(settings.db_url)
t2 = time.perf_counter()
import transformers
path = loader.local_path(loader.resolve(settings.model, settings.device), settings.data_dir)
transformers.AutoModelForCausalLM._model_mapping[type(transformers.AutoConfig.from_pretrained(path))]
t3 = time.perf_counter()
backend = LocalBackend.from_settings(settings)
t4 = time.perf_counter()
print(json.dumps({"imports_s": round(t1 - t0, 3), "database_s": round(t2 - t1, 3),
                  "model_code_imports_s": round(t3 - t2, 3), "model_s": round(t4 - t3, 3)}))
backend.close()
"""


INT8_AB = """
import json, statistics, sys, time
import torch
from pathlib import Path
from transformers import AutoModelForCausalLM, AutoTokenizer
from chatlm.config import Settings
from chatlm import torch_threads
from chatlm.engine import loader, quantize
torch_threads.one_thread_here()
settings = Settings.from_env()
source = loader.resolve(settings.model, "cpu")
path = loader.local_path(source, settings.data_dir)
cache_dir, key = settings.data_dir / "models", f"{source.model_id}:{path}"
tokenizer = AutoTokenizer.from_pretrained(path)
quantize.apply(AutoModelForCausalLM.from_pretrained(path), "int8", tokenizer, cache_dir=cache_dir, key=key)
old, new = [], []
for _ in range(int(sys.argv[1])):
    t = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    quantize.apply(model, "int8", tokenizer, cache_dir=cache_dir, key=key)
    old.append(time.perf_counter() - t)
    del model
    t = time.perf_counter()
    model = quantize.load_cached(path, torch.float32, cache_dir, key)
    new.append(time.perf_counter() - t)
    assert model is not None
    del model
print(json.dumps({"float_then_int8_s": [round(x, 3) for x in old], "from_int8_copy_s": [round(x, 3) for x in new],
                  "median_float_then_int8_s": round(statistics.median(old), 3),
                  "median_from_int8_copy_s": round(statistics.median(new), 3)}))
"""
"""The int8 model load of a second start (imports done, tokenizer loaded), the old way (float
weights, then the cached int8 layers swapped in) and the new (``quantize.load_cached``),
interleaved in one process so both see the same machine load."""


def first_token(env: dict[str, str]) -> dict[str, float]:
    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "chatlm", "ask", "What is the capital of France?",
                             "--max-new-tokens", "16"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL)
    assert proc.stdout is not None
    proc.stdout.read(1)
    first = time.perf_counter() - started
    proc.stdout.read()
    proc.wait()
    return {"first_token_s": round(first, 3), "total_s": round(time.perf_counter() - started, 3)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--quantize", default="auto,none", help="CHATLM_QUANTIZE values to time, comma-separated")
    p.add_argument("--ab", type=int, default=0, help="rounds of the in-process int8 load A/B (0: none)")
    args = p.parse_args()
    out: dict[str, Any] = {"load_avg_start": os.getloadavg(), "by_quantize": {}}
    for mode in args.quantize.split(","):
        with tempfile.TemporaryDirectory(prefix="chatlm-bench-startup-") as tmp:
            env = {**os.environ, "CHATLM_DATA_DIR": str(scratch_data_dir(Path(tmp))), "PYTHONUNBUFFERED": "1",
                   "CHATLM_QUANTIZE": mode}
            first_token(env)  # a first start: migrations create the database, int8 makes its copy
            mine: dict[str, Any] = {"load_avg_start": os.getloadavg()}
            runs = [first_token(env) for _ in range(args.runs)]
            mine["runs"] = runs
            mine["first_token_median_s"] = statistics.median(r["first_token_s"] for r in runs)
            phases = subprocess.run([sys.executable, "-c", PHASES], cwd=ROOT, env=env, capture_output=True,
                                    text=True, check=True)
            mine["phases"] = json.loads(phases.stdout.strip().splitlines()[-1])
            mine["load_avg_end"] = os.getloadavg()
            out["by_quantize"][mode] = mine
    first = out["by_quantize"][args.quantize.split(",")[0]]
    out["first_token_median_s"], out["runs"], out["phases"] = (first["first_token_median_s"], first["runs"],
                                                               first["phases"])
    with tempfile.TemporaryDirectory(prefix="chatlm-bench-startup-") as tmp:
        env = {**os.environ, "CHATLM_DATA_DIR": str(scratch_data_dir(Path(tmp)))}
        if args.ab:
            ab = subprocess.run([sys.executable, "-c", INT8_AB, str(args.ab)], cwd=ROOT, env=env,
                                capture_output=True, text=True, check=True)
            out["int8_load_ab"] = json.loads(ab.stdout.strip().splitlines()[-1])
        imports = subprocess.run([sys.executable, "-X", "importtime", "-c", "import chatlm.cli.main, chatlm.server"],
                                 cwd=ROOT, env=env, capture_output=True, text=True, check=True)
    top: list[tuple[int, str]] = []
    for line in imports.stderr.splitlines():
        parts = line.split("|")
        if len(parts) == 3 and parts[1].strip().isdigit() and not parts[2].startswith("  "):
            top.append((int(parts[1]), parts[2].strip()))
    out["slowest_top_level_imports_ms"] = {name: round(us / 1000) for us, name in sorted(top)[-6:][::-1]}
    out["load_avg_end"] = os.getloadavg()
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
