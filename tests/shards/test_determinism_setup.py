"""Deterministic kernels are switched on without loading torch's compiler stack (seconds per process)."""

from __future__ import annotations

import subprocess
import sys

_PROBE = """
import sys, torch
from expunge.shards.training import configure_determinism, set_deterministic
configure_determinism(1)
on = torch.are_deterministic_algorithms_enabled()
set_deterministic(False)
off = torch.are_deterministic_algorithms_enabled()
print(on, off, "torch._dynamo" in sys.modules)
"""


def test_a_shard_process_turns_deterministic_kernels_on_and_off_without_importing_dynamo():
    # A fresh interpreter: this test process may have loaded the compiler for other reasons.
    out = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True, timeout=300, check=True)
    assert out.stdout.split() == ["True", "False", "False"], out.stderr[-2000:]


def test_a_compiling_caller_keeps_inductor_in_step():
    probe = (
        "import torch._inductor.config as c\n"
        "from expunge.shards.training import set_deterministic\n"
        "set_deterministic(True); print(c.deterministic)\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300, check=True)
    assert out.stdout.strip() == "True", out.stderr[-2000:]
