"""Code reward: run model-written Python against test cases in a sandboxed subprocess.

    score(completion, tests, *, timeout=2.0, memory_mb=512) -> Score(fraction passed, all passed, code)
    run_sandboxed(source, stdin="", *, timeout=2.0, memory_mb=512) -> RunResult

The code is the last ```python block of the completion (or the last ``` block). A test is either
{"input": stdin text, "output": expected stdout} (compared line by line, trailing whitespace
ignored) or {"assert": "assert f(2) == 4"} (appended to the program; passes iff it exits 0).
Reward = fraction of tests passed; 0 when no code, on a syntax error, or when every test times out.

Each run, in order of strength:
  * its own fresh temporary directory as the working directory (deleted afterwards);
  * `python -I` (isolated: no PYTHON* variables, no user site, script dir not on sys.path), with an
    EMPTY environment (no inherited secrets), stdin/stdout/stderr redirected to files in that dir;
  * resource limits: RLIMIT_CPU (timeout + 1 s), RLIMIT_AS (memory_mb), RLIMIT_FSIZE (8 MB of
    output), RLIMIT_NOFILE (64), RLIMIT_NPROC (no fork: os.fork / subprocess fail);
  * a wall-clock timeout after which the whole process group is killed;
  * when running as root with util-linux `unshare` and `setpriv` (containers, CI): a private network
    namespace (no network at all: only a down loopback), a private mount namespace in which the root
    file system is read-only except the run's directory and /dev/shm is an empty tmpfs, and the
    program runs as a fresh unprivileged uid/gid with no supplementary groups (so RLIMIT_NPROC,
    which root ignores, applies).
Without root (e.g. a laptop), the namespaces and uid switch are skipped: the program can then
reach the network and write wherever the user can; `SANDBOX_LEVEL` tells which mode is active.
This is a reward sandbox for training, not a hardened jail (no seccomp); run untrusted code in a
container.
"""
import dataclasses
import json
import os
import random
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Optional, Sequence

from rl.rewards import INCORRECT, Score

_CODE_RE = re.compile(r"```[ \t]*(?:python3?|py)[ \t]*\n(.*?)```", re.DOTALL | re.IGNORECASE)
_ANY_RE = re.compile(r"```[^\n]*\n(.*?)```", re.DOTALL)
MAX_OUTPUT_BYTES = 8 << 20


def _namespaces_available() -> bool:
    if os.name != "posix" or os.geteuid() != 0:
        return False
    if not (shutil.which("unshare") and shutil.which("setpriv")):
        return False
    try:
        r = subprocess.run(["unshare", "-n", "-m", "true"], capture_output=True, timeout=10)
        return r.returncode == 0
    except Exception:  # noqa: BLE001
        return False


def _world_executable(path: Optional[str]) -> bool:
    """True if any user can run `path` (every parent directory o+x, the file o+x)."""
    if not path or not os.path.exists(path):
        return False
    real = os.path.realpath(path)
    parts = real.split(os.sep)
    for i in range(2, len(parts)):
        if not os.stat(os.sep.join(parts[:i])).st_mode & 0o001:
            return False
    return bool(os.stat(real).st_mode & 0o001)


def _sandbox_python() -> str:
    """The interpreter for sandboxed programs: $RL_SANDBOX_PYTHON, else this one if any user can run it,
    else a system python3 (the unprivileged sandbox uid cannot enter e.g. /root/.pyenv)."""
    for cand in (os.environ.get("RL_SANDBOX_PYTHON"), sys.executable, "/usr/bin/python3",
                 "/usr/local/bin/python3", shutil.which("python3")):
        if _world_executable(cand):
            return cand
    return sys.executable


SANDBOX_PYTHON = _sandbox_python()
SANDBOX_LEVEL = ("namespaces+uid" if _namespaces_available() and _world_executable(SANDBOX_PYTHON)
                 else "rlimits")

# Inside the namespaces (as root): make the mounts private, keep the run dir writable, make / read-only,
# hide /dev/shm, then drop to an unprivileged uid and exec Python.
_SETUP = ('mount --make-rprivate / && mount --bind "$1" "$1" && mount -o remount,bind,ro / '
          '&& mount -t tmpfs -o size=1m,mode=1777 none /dev/shm && cd "$1" && shift '
          '&& exec setpriv --reuid="$1" --regid="$1" --clear-groups --inh-caps=-all -- env -i "$2" -I prog.py')


@dataclasses.dataclass
class RunResult:
    returncode: Optional[int]  # None on timeout
    stdout: str
    stderr: str
    timed_out: bool
    seconds: float


def extract_code(completion: str) -> Optional[str]:
    """The last ```python fenced block (or the last fenced block of any language), or None."""
    blocks = _CODE_RE.findall(completion) or _ANY_RE.findall(completion)
    return blocks[-1] if blocks else None


def _limits(timeout: float, memory_mb: int, nproc: int):
    def apply():
        cpu = int(timeout) + 1
        resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
        resource.setrlimit(resource.RLIMIT_AS, (memory_mb << 20, memory_mb << 20))
        resource.setrlimit(resource.RLIMIT_FSIZE, (MAX_OUTPUT_BYTES, MAX_OUTPUT_BYTES))
        resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        resource.setrlimit(resource.RLIMIT_NPROC, (nproc, nproc))
    return apply


def run_sandboxed(source: str, stdin: str = "", *, timeout: float = 2.0, memory_mb: int = 512) -> RunResult:
    """Runs `source` as a Python program in the sandbox (see module docstring)."""
    d = tempfile.mkdtemp(prefix="rl_sandbox_")
    try:
        with open(os.path.join(d, "prog.py"), "w", encoding="utf-8") as f:
            f.write(source)
        with open(os.path.join(d, "stdin.txt"), "w", encoding="utf-8") as f:
            f.write(stdin)
        if SANDBOX_LEVEL == "namespaces+uid":
            uid = 200_000 + random.SystemRandom().randrange(800_000)  # fresh uid: its own NPROC count
            os.chown(d, uid, uid)
            os.chmod(d, 0o700)
            cmd = ["unshare", "-n", "-m", "--", "/bin/sh", "-c", _SETUP, "sh", d, str(uid), SANDBOX_PYTHON]
            nproc = 1  # root ignores it; after setpriv the fresh uid may not fork
        else:
            cmd = [SANDBOX_PYTHON, "-I", "prog.py"]
            nproc = 0  # no new processes for this user (existing ones are unaffected)
        t0 = time.monotonic()
        with open(os.path.join(d, "stdin.txt"), "rb") as fin, \
                open(os.path.join(d, ".out"), "wb") as fout, open(os.path.join(d, ".err"), "wb") as ferr:
            proc = subprocess.Popen(cmd, cwd=d, env={}, stdin=fin, stdout=fout, stderr=ferr, close_fds=True,
                                    start_new_session=True, preexec_fn=_limits(timeout, memory_mb, nproc))
            timed_out = False
            try:
                rc = proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                timed_out, rc = True, None
                try:
                    os.killpg(proc.pid, 9)
                except ProcessLookupError:
                    pass
                proc.wait()
        secs = time.monotonic() - t0

        def read(name):
            with open(os.path.join(d, name), "rb") as f:
                return f.read(MAX_OUTPUT_BYTES).decode("utf-8", "replace")
        return RunResult(rc, read(".out"), read(".err"), timed_out, secs)
    finally:
        shutil.rmtree(d, ignore_errors=True)


def _same_output(got: str, want: str) -> bool:
    a = [line.rstrip() for line in got.strip().splitlines()]
    b = [line.rstrip() for line in want.strip().splitlines()]
    return a == b


def run_tests(source: str, tests: Sequence[dict], *, timeout: float = 2.0, memory_mb: int = 512) -> list[bool]:
    """Pass/fail per test (see module docstring for the test formats)."""
    try:
        compile(source, "prog.py", "exec")
    except (SyntaxError, ValueError):
        return [False] * len(tests)
    out = []
    for t in tests:
        if "assert" in t:
            r = run_sandboxed(source + "\n\n" + t["assert"] + "\n", "", timeout=timeout, memory_mb=memory_mb)
            out.append(r.returncode == 0 and not r.timed_out)
        else:
            r = run_sandboxed(source, t.get("input", ""), timeout=timeout, memory_mb=memory_mb)
            out.append(r.returncode == 0 and not r.timed_out and _same_output(r.stdout, t["output"]))
    return out


def score(completion: str, tests: Sequence[dict], *, timeout: float = 2.0, memory_mb: int = 512) -> Score:
    """Score(fraction of tests passed, all passed, extracted code); 0 without code or tests."""
    code = extract_code(completion)
    if code is None or not tests:
        return INCORRECT
    passed = run_tests(code, tests, timeout=timeout, memory_mb=memory_mb)
    frac = sum(passed) / len(passed)
    return Score(frac, all(passed), code)


def load_code_problems(path: str, *, on_bad_row: str = "error") -> tuple[list, int]:
    """JSONL rows {"id"?, "prompt", "tests": [...]} -> (list[Problem] with meta={"tests": tests}, skipped)."""
    from rl.data import Problem
    if on_bad_row not in ("error", "skip"):
        raise ValueError(f"on_bad_row must be 'error' or 'skip', got {on_bad_row!r}")
    problems, skipped = [], 0
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            err = None
            try:
                rec = json.loads(line)
                if not isinstance(rec, dict) or "prompt" not in rec or not isinstance(rec.get("tests"), list):
                    err = "expected an object with 'prompt' and a list 'tests'"
                elif not all(isinstance(t, dict) and ("assert" in t or "output" in t) for t in rec["tests"]):
                    err = "each test needs 'assert' or 'input'/'output'"
            except json.JSONDecodeError as e:
                err = f"invalid JSON ({e.msg} at column {e.colno})"
            if err:
                if on_bad_row == "error":
                    raise ValueError(f"{path}:{lineno}: {err}")
                skipped += 1
                continue
            pid = str(rec.get("id", f"{os.path.basename(path)}/{lineno}"))
            problems.append(Problem(pid, rec["prompt"], json.dumps(rec["tests"]), rec.get("solution"),
                                    {"tests": rec["tests"]}))
    return problems, skipped
