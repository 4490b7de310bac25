"""Part 3 on a real scheduler: slurm/study.sbatch submitted to a private single-node SLURM on this
machine (slurm/local-cluster.sh) trains the smoke study in rounds of a job array and ends with the
records a one-process run writes. Runs under ``make test-slurm`` (which installs SLURM and munge);
skipped elsewhere."""
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from test_study_runner import _records, smoke_results  # noqa: F401  (smoke_results: a fixture)

ROOT = Path(__file__).resolve().parents[1]
ENABLE = "HWUTILS_TEST_SLURM"
#: The whole chain of the smoke study, every round and follow-up job: minutes on two cores.
CHAIN_SECONDS = 900

pytestmark = pytest.mark.skipif(not os.environ.get(ENABLE), reason=f"needs a local SLURM: make test-slurm (sets {ENABLE}=1)")


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").replace("\r", "\n").splitlines()[-lines:])
    except OSError:
        return f"({path.name}: none)"


@pytest.fixture(scope="module")
def cluster():
    """slurmctld, slurmd and munged on localhost, stopped at the end however the test ends. One fixed
    folder, so that a run interrupted before it stopped them is cleaned up by the next."""
    folder = Path(tempfile.gettempdir()) / "hw3-slurm-test"
    script = ROOT / "slurm" / "local-cluster.sh"
    started = subprocess.run(["bash", str(script), "start", str(folder)], capture_output=True, text=True, timeout=120)
    if started.returncode != 0:
        subprocess.run(["bash", str(script), "stop", str(folder)], timeout=60)
        pytest.fail(f"the local SLURM did not start: {started.stderr.strip()}")
    try:
        yield {**os.environ, "SLURM_CONF": str(folder / "slurm.conf"), "PATH": f"{os.environ['PATH']}:/usr/sbin"}, folder
    finally:
        subprocess.run(["bash", str(script), "stop", str(folder)], timeout=60)


def _slurm(env, *argv) -> str:
    return subprocess.run(list(argv), env=env, capture_output=True, text=True, timeout=60, check=True).stdout


def test_the_sbatch_chain_trains_the_smoke_study_in_rounds_to_the_records_of_one_process(
        cluster, smoke_results, mnist_dir, tmp_path):  # noqa: F811
    env, folder = cluster
    reference, _ = smoke_results
    state, results = tmp_path / "chain", tmp_path / "results"
    env = {**env, "HWUTILS_DATA_DIR": str(mnist_dir), "HW3_PYTHON": sys.executable, "HW3_SLURM_STATE": str(state),
           "HW3_WAIT": "2"}
    submitted = subprocess.run(["sbatch", "--parsable", "--array=1-2%1", f"--output={tmp_path}/task-%A_%a.out",
                                "slurm/study.sbatch", "--profile", "smoke", "--results-dir", str(results)],
                               cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert submitted.returncode == 0, submitted.stderr
    outcome, deadline = state / "outcome", time.monotonic() + CHAIN_SECONDS
    while not outcome.exists() and time.monotonic() < deadline:
        time.sleep(2)
    if not outcome.exists():
        subprocess.run(["scancel", "--name=hw3-study", "--name=hw3-study-follow-up"], env=env, timeout=60)
        logs = "\n".join(f"--- {p.name}\n{_tail(p)}" for p in sorted([*tmp_path.glob("*.out"), *state.rglob("*.out"),
                                                                       folder / "slurmctld.log"]))
        pytest.fail(f"the chain did not end within {CHAIN_SECONDS} s; queue:\n{_slurm(env, 'squeue')}\n{logs}")
    said = outcome.read_text().strip()
    assert said.startswith("complete "), said
    assert Path(said.split(" ", 1)[1]).is_file()  # the bundle
    rounds = sorted(state.glob("round-*"))
    codes = {p.relative_to(state).as_posix(): p.read_text().strip() for p in state.glob("round-*/task-*.rc")}
    assert len(rounds) >= 2 and set(codes.values()) <= {"0", "75"}, codes  # shards waited, and a round followed
    assert "0" in {codes.get(f"{rounds[-1].name}/task-{i}.rc") for i in (1, 2)}, codes  # the round that finished
    assert _records(results) == _records(reference)
    for _ in range(30):  # the last follow-up job leaves the queue once it has written the outcome
        if not _slurm(env, "squeue", "--noheader").strip():
            break
        time.sleep(1)
    assert not _slurm(env, "squeue", "--noheader").strip()
