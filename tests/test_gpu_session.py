"""benchmarks/gpu_session.sh, the GPU window's one script: what can be checked without a GPU
(its smoke mode, end to end on the CPU, is run by hand: `benchmarks/gpu_session.sh smoke`)."""
import os
import subprocess
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_session.sh"


def _run(*args, **env):
    environment = {k: v for k, v in os.environ.items() if k != "OUT"} | env
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, env=environment, timeout=60)


def test_the_script_parses_and_its_help_says_how_to_call_it_from_the_device_tool():
    assert subprocess.run(["bash", "-n", str(SCRIPT)]).returncode == 0
    done = _run("help")
    assert done.returncode == 0
    assert 'run(command="bash benchmarks/gpu_session.sh run 570", carry=["gpu-data"], timeout_s=600)' in done.stdout
    assert "continue" in done.stdout and ".git/info/exclude" in done.stdout


def test_a_session_without_OUT_or_with_an_unknown_mode_stops_at_once_in_one_line():
    done = _run("run", "5")
    assert done.returncode == 2 and done.stderr.strip().count("\n") == 0 and "$OUT is not set" in done.stderr
    assert _run("fly").returncode == 2
