"""CPU seconds of switching on deterministic kernels in a fresh process: torch.use_deterministic_algorithms vs set_deterministic (docs/performance.md)."""

import json
import statistics
import subprocess
import sys

old = "import time,torch; t=time.process_time(); torch.use_deterministic_algorithms(True); print(time.process_time()-t)"
new = "import time,torch; from expunge.shards.training import set_deterministic; t=time.process_time(); set_deterministic(True); print(time.process_time()-t)"
res = {"old": [], "new": []}
for _ in range(3):
    for k, code in (("old", old), ("new", new)):
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
        res[k].append(float(out.stdout.strip()))
print(json.dumps({k: {"median_cpu_s": statistics.median(v), "runs": v} for k, v in res.items()}))
