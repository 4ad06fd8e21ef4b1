"""Code reward: run model-written Python against test cases in a sandboxed subprocess.

    score(completion, tests, *, timeout=2.0, memory_mb=512) -> Score(fraction passed, all passed, code)
    run_sandboxed(source, stdin="", *, timeout=2.0, memory_mb=512, level=None) -> RunResult

The code is the last ```python block of the completion (or the last ``` block). A test is either
{"input": stdin text, "output": expected stdout} (compared line by line, trailing whitespace
ignored) or {"assert": "assert f(2) == 4"} (appended to the program; passes iff it exits 0).
Reward = fraction of tests passed; 0 when no code, on a syntax error, or when every test times out.

Each run:
  * its own fresh temporary directory as the working directory, deleted afterwards on every path
    (it lives under the scoring pool's per-worker TMPDIR, which the pool deletes if it kills the
    worker mid-run);
  * `python -I` (isolated: no PYTHON* variables, no user site, script dir not on sys.path), with an
    EMPTY environment (no inherited secrets), stdin/stdout/stderr redirected to files;
  * resource limits: RLIMIT_CPU (timeout + 1 s), RLIMIT_AS (memory_mb), RLIMIT_FSIZE (8 MB of
    output), RLIMIT_NOFILE (64), RLIMIT_NPROC (no fork: os.fork / subprocess fail);
  * a wall-clock limit. Inside a scoring-pool worker it is clamped to what is left of the pool's
    per-item limit (`pool.DEADLINE`): the pool's limit wins, and tests that no longer fit fail
    without being started;
  * the program stays in the caller's process group and gets SIGKILL when its parent dies
    (PR_SET_PDEATHSIG), so killing a pool worker's group kills the program and its namespaces;
  * an isolation level, the strongest available (`SANDBOX_LEVEL`; $RL_SANDBOX_LEVEL forces one):
      "bwrap"           bubblewrap (Debian/Ubuntu package `bubblewrap`), as any user; as root it
                        first drops to a fresh unprivileged uid. New network (no interface but a
                        down loopback), PID, IPC, UTS, user and mount namespaces. The file system
                        holds only /usr read-only (with the /bin, /lib* links), the interpreter's
                        prefix read-only, an empty /tmp, a minimal /dev, a private /proc, and the
                        run directory read-write as /box: no home, project, dataset or other
                        mounted file systems. Nothing in it survives its parent (--die-with-parent).
      "namespaces+uid"  root without bwrap (util-linux unshare/setpriv, coreutils chroot): new
                        network, mount and PID namespaces; the program is chrooted into a tmpfs
                        holding the same read-only /usr + interpreter prefix and its directory as
                        /box, and runs as a fresh unprivileged uid/gid with no groups (so
                        RLIMIT_NPROC applies).
      "rlimits"         neither: resource limits, empty environment, wall-clock limit and (as root)
                        a fresh uid only. The program CAN reach the network and read/write whatever
                        the user can: use it only for trusted completions.
This is a reward sandbox for training, not a hardened jail (no seccomp); run untrusted code in a
container.
"""
import ctypes
import dataclasses
import json
import os
import random
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from typing import Optional, Sequence

from rl.rewards import INCORRECT, Score
from rl.rewards import pool as _pool

_CODE_RE = re.compile(r"```[ \t]*(?:python3?|py)[ \t]*\n(.*?)```", re.DOTALL | re.IGNORECASE)
_ANY_RE = re.compile(r"```[^\n]*\n(.*?)```", re.DOTALL)
MAX_OUTPUT_BYTES = 8 << 20
LEVELS = ("bwrap", "namespaces+uid", "rlimits")  # strongest first
_ROOT = os.name == "posix" and os.geteuid() == 0
_FRESH_UIDS = (200_000, 1_000_000)  # per-run uid range when root drops privileges


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


def _python_prefix(exe: str) -> str:
    """The directory to expose read-only for the interpreter, "" when it lives under /usr."""
    real = os.path.realpath(exe)
    return "" if real.startswith("/usr/") else os.path.dirname(os.path.dirname(real))


def _root_links() -> list:
    """[(kind, path, target)] for /bin, /lib, /lib64, ...: symlinks into /usr are recreated, dirs bound."""
    out = []
    for name in ("bin", "sbin", "lib", "lib32", "lib64", "libx32"):
        p = "/" + name
        if os.path.islink(p):
            out.append(("link", p, os.readlink(p)))
        elif os.path.isdir(p):
            out.append(("bind", p, p))
    return out


# Inside bwrap: forbid new processes (RLIMIT_NPROC counts this uid's processes), then exec the program.
# The launcher runs with -S so nothing is imported before the limit; the program gets -I as elsewhere.
_NPROC_LAUNCHER = ("import os, resource, sys; resource.setrlimit(resource.RLIMIT_NPROC, (0, 0)); "
                   "os.execv(sys.executable, [sys.executable, '-I', 'prog.py'])")


def _bwrap_cmd(box: str, uid: Optional[int]) -> list:
    cmd = []
    if uid is not None:  # root: bwrap runs as a fresh unprivileged uid (root ignores RLIMIT_NPROC)
        # (--pdeathsig re-arms the parent-death signal that the uid change clears)
        cmd += ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--inh-caps=-all",
                "--pdeathsig=KILL", "--"]
    cmd += ["bwrap", "--unshare-all", "--die-with-parent", "--new-session", "--clearenv",
            "--ro-bind", "/usr", "/usr"]
    for kind, p, target in _root_links():
        cmd += ["--symlink", target, p] if kind == "link" else ["--ro-bind", p, p]
    prefix = _python_prefix(SANDBOX_PYTHON)
    if prefix:
        cmd += ["--ro-bind", prefix, prefix]
    cmd += ["--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp", "--bind", box, "/box", "--chdir", "/box",
            "--", SANDBOX_PYTHON, "-I", "-S", "-c", _NPROC_LAUNCHER]
    return cmd


# "namespaces+uid" (root, no bwrap), as `unshare -n -m -p -f --kill-child sh -c _SETUP sh DIR UID PY PREFIX`:
# private mounts; a tmpfs root with read-only binds of /usr (+ /bin, /lib* as on the host) and the
# interpreter prefix (non-recursive binds: no other file system is reachable), DIR/box as /box, a 1 MB
# /tmp; the root is then remounted read-only; chroot; run Python as the fresh uid. The namespace's PID 1
# stays a root shell that waits for it: a uid change clears the parent-death signal, and --kill-child
# must reach a process that still has it (killing PID 1 kills everything in the namespace).
_SETUP = r"""
set -e
R="$1/.root"; mkdir -p "$R"
mount --make-rprivate /
mount -t tmpfs -o size=1m,mode=755 none "$R"
robind() { mkdir -p "$R$1"; mount --bind "$1" "$R$1"; mount -o remount,bind,ro "$R$1"; }
robind /usr
for p in /bin /sbin /lib /lib32 /lib64 /libx32; do
  if [ -L "$p" ]; then ln -s "$(readlink "$p")" "$R$p"; elif [ -d "$p" ]; then robind "$p"; fi
done
if [ -n "$4" ]; then robind "$4"; fi
mkdir -p "$R/box" "$R/tmp" "$R/dev"
mount --bind "$1/box" "$R/box"
mount -t tmpfs -o size=1m,mode=1777 none "$R/tmp"
touch "$R/dev/null"; mount --bind /dev/null "$R/dev/null"
mount -o remount,bind,ro "$R"
exec chroot "$R" /usr/bin/env -i /bin/sh -c \
  'cd /box && setpriv --reuid="$0" --regid="$0" --clear-groups --inh-caps=-all --pdeathsig=KILL -- "$1" -I prog.py' \
  "$2" "$3"
"""


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


def _limits(timeout: float, memory_mb: int, nproc: Optional[int]):
    def apply():  # runs in the child between fork and exec
        try:
            ctypes.CDLL(None).prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG: die with the caller
        except (OSError, AttributeError):  # pragma: no cover - not Linux
            pass
        cpu = int(timeout) + 1
        resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
        resource.setrlimit(resource.RLIMIT_AS, (memory_mb << 20, memory_mb << 20))
        resource.setrlimit(resource.RLIMIT_FSIZE, (MAX_OUTPUT_BYTES, MAX_OUTPUT_BYTES))
        resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        if nproc is not None:
            resource.setrlimit(resource.RLIMIT_NPROC, (nproc, nproc))
    return apply


def _remaining(timeout: float) -> float:
    """`timeout`, clamped to what is left of the enclosing pool item's limit (minus a small margin)."""
    if _pool.DEADLINE is None:
        return timeout
    return min(timeout, _pool.DEADLINE - time.monotonic() - 0.15)


def run_sandboxed(source: str, stdin: str = "", *, timeout: float = 2.0, memory_mb: int = 512,
                  level: Optional[str] = None) -> RunResult:
    """Runs `source` as a Python program in the sandbox (see module docstring).

    level: one of LEVELS (default SANDBOX_LEVEL). Inside a pool worker `timeout` is clamped to the
    item's remaining time; when none is left the program is not started (timed_out=True)."""
    level = level or sandbox_level()
    if level not in LEVELS:
        raise ValueError(f"sandbox level must be one of {LEVELS}, got {level!r}")
    timeout = _remaining(timeout)
    if timeout <= 0:
        return RunResult(None, "", "", True, 0.0)
    d = tempfile.mkdtemp(prefix="rl_sandbox_")
    try:
        box = os.path.join(d, "box")
        os.mkdir(box)
        with open(os.path.join(box, "prog.py"), "w", encoding="utf-8") as f:
            f.write(source)
        with open(os.path.join(d, ".stdin"), "w", encoding="utf-8") as f:
            f.write(stdin)
        uid = random.SystemRandom().randrange(*_FRESH_UIDS) if _ROOT else None  # its own NPROC count
        nproc = None
        if uid is not None:
            os.chown(box, uid, uid)
            os.chmod(box, 0o700)
            os.chmod(d, 0o711)
        if level == "bwrap":
            cmd = _bwrap_cmd(box, uid)
        elif level == "namespaces+uid":
            if uid is None:
                raise ValueError("sandbox level 'namespaces+uid' needs root")
            cmd = ["unshare", "-n", "-m", "-p", "-f", "--kill-child", "--", "/bin/sh", "-c", _SETUP, "sh", d,
                   str(uid), SANDBOX_PYTHON, _python_prefix(SANDBOX_PYTHON)]
            nproc = 1  # root ignores it; after setpriv the fresh uid may not fork
        elif uid is not None and shutil.which("setpriv"):
            cmd = ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--pdeathsig=KILL", "--",
                   SANDBOX_PYTHON, "-I", "prog.py"]
            nproc = 1
        else:
            cmd = [SANDBOX_PYTHON, "-I", "prog.py"]
            nproc = 0  # no new processes for this user (existing ones are unaffected)
        t0 = time.monotonic()
        with open(os.path.join(d, ".stdin"), "rb") as fin, \
                open(os.path.join(d, ".out"), "wb") as fout, open(os.path.join(d, ".err"), "wb") as ferr:
            # No new session: the program stays in the caller's process group, so a pool worker killed
            # with its group takes it along; bwrap / unshare --kill-child take their namespaces down.
            proc = subprocess.Popen(cmd, cwd=box, env={}, stdin=fin, stdout=fout, stderr=ferr, close_fds=True,
                                    preexec_fn=_limits(timeout, memory_mb, nproc))
            timed_out = False
            try:
                rc = proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                timed_out, rc = True, None
                proc.kill()
                proc.wait()
        secs = time.monotonic() - t0

        def read(name):
            with open(os.path.join(d, name), "rb") as f:
                return f.read(MAX_OUTPUT_BYTES).decode("utf-8", "replace")
        return RunResult(rc, read(".out"), read(".err"), timed_out, secs)
    finally:
        shutil.rmtree(d, ignore_errors=True)


def _level_works(level: str) -> bool:
    """True if `level` runs a trivial program correctly on this machine."""
    if level == "rlimits":
        return True
    if os.name != "posix":
        return False
    need = {"bwrap": ["bwrap"] + (["setpriv"] if _ROOT else []),
            "namespaces+uid": ["unshare", "setpriv", "chroot"]}[level]
    if not all(shutil.which(c) for c in need) or (level == "namespaces+uid" and not _ROOT):
        return False
    if _ROOT and not _world_executable(SANDBOX_PYTHON):
        return False
    try:
        r = run_sandboxed("print(6 * 7)", timeout=20.0, level=level)
    except Exception:  # noqa: BLE001
        return False
    return r.returncode == 0 and r.stdout.strip() == "42"


def available_levels() -> list:
    """The isolation levels that work on this machine, strongest first (runs a probe program per level)."""
    return [lv for lv in LEVELS if _level_works(lv)]


_LEVEL: list = []


def sandbox_level() -> str:
    """$RL_SANDBOX_LEVEL if set, else the strongest level that works here (probed once, ~0.5 s)."""
    if not _LEVEL:
        want = os.environ.get("RL_SANDBOX_LEVEL")
        if want and want not in LEVELS:
            raise ValueError(f"$RL_SANDBOX_LEVEL must be one of {LEVELS}, got {want!r}")
        _LEVEL.append(want or next(lv for lv in LEVELS if _level_works(lv)))
    return _LEVEL[0]


def __getattr__(name):  # `code.SANDBOX_LEVEL` is computed on first use (the probe runs programs)
    if name == "SANDBOX_LEVEL":
        return sandbox_level()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _same_output(got: str, want: str) -> bool:
    a = [line.rstrip() for line in got.strip().splitlines()]
    b = [line.rstrip() for line in want.strip().splitlines()]
    return a == b


def run_tests(source: str, tests: Sequence[dict], *, timeout: float = 2.0, memory_mb: int = 512,
              level: Optional[str] = None) -> list[bool]:
    """Pass/fail per test (see module docstring for the test formats)."""
    try:
        compile(source, "prog.py", "exec")
    except (SyntaxError, ValueError):
        return [False] * len(tests)
    out = []
    for t in tests:
        if "assert" in t:
            r = run_sandboxed(source + "\n\n" + t["assert"] + "\n", "", timeout=timeout, memory_mb=memory_mb,
                              level=level)
            out.append(r.returncode == 0 and not r.timed_out)
        else:
            r = run_sandboxed(source, t.get("input", ""), timeout=timeout, memory_mb=memory_mb, level=level)
            out.append(r.returncode == 0 and not r.timed_out and _same_output(r.stdout, t["output"]))
    return out


def score(completion: str, tests: Sequence[dict], *, timeout: float = 2.0, memory_mb: int = 512,
          level: Optional[str] = None) -> Score:
    """Score(fraction of tests passed, all passed, extracted code); 0 without code or tests."""
    code = extract_code(completion)
    if code is None or not tests:
        return INCORRECT
    passed = run_tests(code, tests, timeout=timeout, memory_mb=memory_mb, level=level)
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
