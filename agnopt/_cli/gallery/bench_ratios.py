"""`python -m agnopt bench` at one small size: each step's time over the fused memory roofline."""
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import matplotlib.pyplot as plt

with tempfile.TemporaryDirectory() as tmp:
    out = Path(tmp) / "bench.json"
    subprocess.run([sys.executable, "-m", "agnopt", "bench", "--sizes", "1e5", "--tree-leaves", "0",
                    "--repeats", "5", "--budget", "0.5", "--no-second-order", "--json", str(out)],
                   check=True, capture_output=True)
    results = json.loads(out.read_text())

rows = [r for r in results["steps"] if r.get("x_roofline") is not None]
optimizers = list(dict.fromkeys(r["optimizer"] for r in rows))
impls = list(dict.fromkeys(r["impl"] for r in rows))
height = 0.8 / len(impls)
fig, ax = plt.subplots(figsize=(11, 0.22 * len(optimizers) * len(impls) + 2), layout="constrained")
for k, impl in enumerate(impls):
    mine = [(i + k * height, r["x_roofline"]) for i, o in enumerate(optimizers)
            for r in rows if r["optimizer"] == o and r["impl"] == impl]
    ax.barh([y for y, _ in mine], [v for _, v in mine], height=height, label=impl)
ax.set_yticks([i + (len(impls) - 1) * height / 2 for i in range(len(optimizers))], optimizers)
ax.axvline(1.0, color="k", lw=1)
ax.set_xscale("log")
ax.invert_yaxis()
ax.set(xlabel="step time / fused memory roofline (1 = ideal, lower is better)",
       title=f"python -m agnopt bench: one step on N = 1e5 parameters, {results.get('dtype', '')}")
ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0))
