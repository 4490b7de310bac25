"""Specifications of the numbers' independence of the machine's load: a run trained at 1 thread (a busy
machine, hwutils.threads) has the same weights, bit for bit, as one trained at 2 (a quiet one).

Each check runs in a fresh process, because MKL reads ``MKL_CBWR`` at its first product: the process
inherits this one's environment, so ``MKL_CBWR= pytest tests/test_numerics.py`` shows what the setting
that ``import hwutils`` makes by default fixes (the float32 weights then differ).
"""
import json
import subprocess
import sys

import pytest

TRAIN_AT_1_AND_2_THREADS = """
import hashlib, json, os
import hwutils  # first, as the notebooks do: it sets MKL_CBWR before torch loads
import torch
from hwutils.data import Split
from hwutils.models import MLP
from hwutils.threads import THREADS_ENV, numerical_mode
from hwutils.training import TrainConfig, fit_members

torch.manual_seed(0)
train = Split(torch.rand(1024, 784), torch.randint(10, (1024,)))
val = Split(torch.rand(512, 784), torch.randint(10, (512,)))
digests = {}
for precision in ("fp32", "bf16"):
    for threads in (1, 2):
        os.environ[THREADS_ENV] = str(threads)  # what TrainingThreads picks on a busy and on a quiet machine
        torch.manual_seed(1)
        models = [MLP(784, (256, 256), 10, 0.2, 0.5)]
        config = TrainConfig(epochs=1, batch_size=128, l2=1e-5, max_norm=3.0, precision=precision, seed=0)
        history, = fit_members(models, train, val, [config], progress=False)
        sha = hashlib.sha256()
        for tensor in [*models[0].state_dict().values(), torch.tensor(history.iter_loss + history.val_loss)]:
            sha.update(tensor.numpy().tobytes())
        digests[f"{precision} at {threads} thread(s)"] = sha.hexdigest()
print(json.dumps({"digests": digests, "mode": numerical_mode()}))
"""

PRODUCT_BEFORE_HWUTILS = """
import json
import torch
torch.ones(8, 8) @ torch.ones(8, 8)  # MKL has run: the variable hwutils sets comes too late
import hwutils
from hwutils.threads import numerical_mode
print(json.dumps(numerical_mode()))
"""


def run_python(code: str) -> dict:
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def trained():
    return run_python(TRAIN_AT_1_AND_2_THREADS)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_weights_trained_at_one_and_at_two_threads_are_bit_identical(trained, precision):
    digests = trained["digests"]
    assert digests[f"{precision} at 1 thread(s)"] == digests[f"{precision} at 2 thread(s)"], trained["mode"]


def test_importing_hwutils_first_puts_mkls_strict_reproducibility_in_effect(trained):
    assert trained["mode"]["cbwr_in_effect"] and trained["mode"]["mkl_cbwr"], trained["mode"]


def test_a_product_before_hwutils_is_imported_is_reported_as_too_late(monkeypatch):
    monkeypatch.delenv("MKL_CBWR", raising=False)
    mode = run_python(PRODUCT_BEFORE_HWUTILS)
    assert mode["mkl_cbwr"] == "AUTO,STRICT" and mode["cbwr_in_effect"] is False
