"""Code sandbox: each attack yields reward 0 and leaves the host untouched, at every available level.

Levels (rl.rewards.code.LEVELS): "bwrap" (bubblewrap, any user), "namespaces+uid" (root without bwrap),
"rlimits" (fallback). Each test runs at every level that works here and that promises the property;
the others skip with the reason. `test_bwrap_as_unprivileged_user` runs the bwrap checks from a
process that is not root (the path a researcher's workstation takes).
"""
import functools
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid

import pytest

from rl.rewards import code, pool

T = 1.5  # wall-clock limit per run in these tests
AVAILABLE = code.available_levels()
ISOLATED = ("bwrap", "namespaces+uid")  # levels with network / mount namespaces
ROOT_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _levels(*promised):
    """pytest params for the levels that promise a property, skipped where unavailable."""
    out = []
    for lv in promised or code.LEVELS:
        marks = [] if lv in AVAILABLE else [pytest.mark.skip(reason=f"sandbox level {lv!r} not available here "
                                                                   "(bwrap: apt-get install bubblewrap; "
                                                                   "namespaces+uid: root + util-linux)")]
        out.append(pytest.param(lv, marks=marks, id=lv))
    return out


def _fence(src):
    return f"```python\n{src}\n```"


def _run(src, level, **kw):
    kw.setdefault("timeout", T)
    return code.run_sandboxed(src, level=level, **kw)


def _procs_named(name: str) -> list:
    """PIDs on the host whose comm (process name) is `name`."""
    out = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                with open(f"/proc/{pid}/comm") as f:
                    if f.read().strip() == name:
                        out.append(int(pid))
            except OSError:
                pass
    return out


def _named_sleeper(name: str, seconds: int = 30, fork: bool = True) -> str:
    """A program that renames itself `name`, tries to daemonise a child (also named `name`), and sleeps."""
    return (f"import ctypes, os, time\n"
            f"ctypes.CDLL(None).prctl(15, {name.encode()!r}, 0, 0, 0)\n"
            + ("try:\n    if os.fork() == 0:\n        os.setsid()\n        time.sleep({s})\n"
               "except OSError:\n    pass\n".format(s=seconds) if fork else "")
            + f"time.sleep({seconds})\n")


def _wait_gone(name: str, within: float = 3.0) -> list:
    t0 = time.monotonic()
    while time.monotonic() - t0 < within:
        left = _procs_named(name)
        if not left:
            return []
        time.sleep(0.05)
    return _procs_named(name)


def test_levels_reported():
    assert code.SANDBOX_LEVEL in code.LEVELS and code.SANDBOX_LEVEL == AVAILABLE[0]
    assert "rlimits" in AVAILABLE
    if shutil.which("bwrap") and (os.geteuid() != 0 or shutil.which("setpriv")):
        assert "bwrap" in AVAILABLE, "bwrap is installed but the sandbox could not use it"


@pytest.mark.parametrize("level", _levels())
def test_correct_partial_syntax_error(level, monkeypatch):
    monkeypatch.setattr(code, "_LEVEL", [level])  # the default level, as tasks use it
    tests = [{"input": "2 3\n", "output": "5"}, {"input": "10 -4\n", "output": "6\n"}]
    good = "a, b = map(int, input().split())\nprint(a + b)"
    assert code.score(_fence(good), tests, timeout=T) == (1.0, True, good + "\n")
    half = "a, b = map(int, input().split())\nprint(5)"
    assert code.score(_fence(half), tests, timeout=T).reward == 0.5
    assert code.score(_fence("def f(:\n  pass"), tests, timeout=T).reward == 0.0
    assert code.score("no code here", tests, timeout=T) == code.INCORRECT


@pytest.mark.parametrize("level", _levels())
def test_time_limit_and_daemonised_child(level):
    name = "rlm" + uuid.uuid4().hex[:10]
    t0 = time.monotonic()
    r = _run(_named_sleeper(name), level, timeout=0.7)
    assert r.timed_out and r.returncode is None and time.monotonic() - t0 < 0.7 + 4.0
    assert _wait_gone(name) == []
    r = _run("while True:\n    pass", level, timeout=0.5)
    assert r.timed_out


@pytest.mark.parametrize("level", _levels())
def test_fork_bomb_and_subprocess(level, tmp_path):
    os.chmod(tmp_path, 0o777)
    marker = tmp_path / "forked"
    r = _run(f"import subprocess\nsubprocess.run(['touch', {str(marker)!r}])\nprint('ok')", level)
    assert r.stdout.strip() != "ok" and not marker.exists()
    r = _run("import os\nn = 0\nwhile n < 10000:\n    os.fork()\n    n += 1\nprint('ok')", level)
    assert "ok" not in r.stdout and ("BlockingIOError" in r.stderr or "Resource temporarily" in r.stderr)


@pytest.mark.parametrize("level", _levels())
def test_memory_and_output_limits(level):
    r = _run("x = bytearray(2 << 30)\nprint('ok')", level, memory_mb=256)
    assert r.returncode != 0 and "ok" not in r.stdout
    t0 = time.monotonic()
    r = _run("while True:\n    print('x' * 65536)", level, timeout=5.0)
    assert len(r.stdout) <= code.MAX_OUTPUT_BYTES and r.returncode != 0 and time.monotonic() - t0 < 5.0 + 4.0


@pytest.mark.parametrize("level", _levels())
def test_environment_not_inherited(level, monkeypatch):
    monkeypatch.setenv("RL_TEST_SECRET", "hunter2")
    r = _run("import os\nprint(os.environ.get('RL_TEST_SECRET', 'none'), len(os.environ) < 5)", level)
    assert r.stdout.split() == ["none", "True"]


@pytest.mark.parametrize("level", _levels(*ISOLATED))
def test_no_network(level):
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    port = srv.getsockname()[1]
    try:
        src = ("import socket\nfor host in ('127.0.0.1', '1.1.1.1'):\n    s = socket.socket()\n    s.settimeout(0.5)\n"
               f"    try:\n        s.connect((host, {port} if host == '127.0.0.1' else 80)); print('connected')\n"
               "    except OSError:\n        print('blocked')")
        assert _run(src, level).stdout.split() == ["blocked", "blocked"]
    finally:
        srv.close()


@pytest.mark.parametrize("level", _levels(*ISOLATED))
def test_cannot_read_project_home_or_task_files(level):
    dataset = os.path.join(ROOT_DIR, "rl", "data", "math_sample.jsonl")
    home = os.path.expanduser("~")
    src = (f"import os\nfor p in [{dataset!r}, {__file__!r}, {home!r}, '/root', '/home', '/etc/passwd', '/work']:\n"
           "    try:\n        open(p).read() if os.path.isfile(p) else os.listdir(p); print('read', p)\n"
           "    except OSError:\n        print('hidden')")
    out = _run(src, level).stdout.split("\n")
    assert [x for x in out if x] == ["hidden"] * 7, out


@pytest.mark.parametrize("level", _levels(*ISOLATED))
def test_write_outside_its_directory(level, tmp_path):
    os.chmod(tmp_path, 0o777)
    tag = uuid.uuid4().hex[:8]
    victims = [str(tmp_path / "pwned"), f"/tmp/rl_pwned_{tag}", f"/var/tmp/rl_pwned_{tag}",
               f"/dev/shm/rl_pwned_{tag}", os.path.join(ROOT_DIR, f"rl_pwned_{tag}")]
    src = "\n".join(f"try:\n    open({v!r}, 'w').write('x')\nexcept OSError:\n    pass" for v in victims)
    src += "\nimport os\nopen('mine.txt', 'w').write('x')\nprint(os.getcwd(), os.path.exists('mine.txt'))"
    r = _run(src, level)
    assert r.returncode == 0 and r.stdout.split()[1] == "True", r.stderr
    assert not any(os.path.exists(v) for v in victims)


def _ignores_deadline(src: str, level: str):
    """A scorer that runs a program for 30 s, ignoring the pool's deadline (the pool must kill it all)."""
    pool.DEADLINE = None
    return code.run_sandboxed(src, timeout=30.0, level=level)


def _sandbox_dirs() -> list:
    root = tempfile.gettempdir()
    return [os.path.join(root, d, e) for d in os.listdir(root) if d.startswith("rl_pool_")
            for e in (os.listdir(os.path.join(root, d)) if os.path.isdir(os.path.join(root, d)) else [])
            if e.startswith("rl_sandbox_")]


@pytest.mark.parametrize("level", _levels())
def test_through_pool_with_default_limits(level):
    """Scored through score_batch with the pool's default 1 s limit: nothing outlives it, no temp dir left."""
    name = "rlp" + uuid.uuid4().hex[:10]
    comp = _fence(_named_sleeper(name))
    # the code runner's own limit (2 s) is longer than the pool's (1 s): the pool's wins
    scorer = functools.partial(code.score, timeout=2.0, level=level)
    pool.get_pool(1).warm()  # worker start-up is not part of the item's limit
    t0 = time.monotonic()
    out = pool.score_batch(scorer, [comp], [[{"input": "", "output": ""}]], workers=1)
    assert out[0].reward == 0.0 and not out[0].correct and time.monotonic() - t0 < 1.0 + 3.0
    assert _wait_gone(name) == []
    # a scorer that ignores the deadline: the pool kills the worker's whole group and deletes its dir
    p = pool.get_pool(1)
    restarts = p.restarts
    name = "rlq" + uuid.uuid4().hex[:10]
    out = pool.get_pool(1).map(_ignores_deadline, [(_named_sleeper(name, fork=False), level)], 1.0)
    assert out == [("timeout", None)] and p.restarts == restarts + 1
    assert _wait_gone(name) == []
    assert _sandbox_dirs() == []


NONROOT_SCRIPT = r"""
import os, sys
from rl.rewards import code
assert os.geteuid() != 0
assert code.SANDBOX_LEVEL == "bwrap", code.SANDBOX_LEVEL
r = code.run_sandboxed("import os, socket\nprint(sorted(os.listdir('/')))\n"
                       "try:\n    socket.create_connection(('127.0.0.1', 22), timeout=0.5); print('net')\n"
                       "except OSError:\n    print('nonet')\n"
                       "try:\n    os.fork(); print('forked')\nexcept OSError:\n    print('nofork')\n", timeout=5.0)
print(r.stdout.replace("\n", " | "), r.stderr[-300:])
"""


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("setpriv"), reason="needs root to become another user")
@pytest.mark.skipif("bwrap" not in AVAILABLE, reason="bwrap not installed (apt-get install bubblewrap)")
def test_bwrap_as_unprivileged_user():
    """The non-root path: a process running as `nobody` gets the bwrap level and its isolation."""
    py = code.SANDBOX_PYTHON  # world-executable interpreter; the rl.rewards modules need only the stdlib
    top = tempfile.mkdtemp(prefix="rl_nonroot_test_")  # pytest's tmp_path is not reachable by nobody
    try:
        _run_as_nobody(py, top)
    finally:
        shutil.rmtree(top, ignore_errors=True)


def _run_as_nobody(py, top):
    import pathlib
    tmp_path = pathlib.Path(top)
    pkg = tmp_path / "src"
    shutil.copytree(os.path.join(ROOT_DIR, "rl", "rewards"), pkg / "rl" / "rewards",
                    ignore=shutil.ignore_patterns("__pycache__"))
    (pkg / "rl" / "__init__.py").write_text("")
    os.chmod(tmp_path, 0o755)
    for dirpath, _, files in os.walk(pkg):
        os.chmod(dirpath, 0o755)
        for f in files:
            os.chmod(os.path.join(dirpath, f), 0o644)
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(pkg), "TMPDIR": "/tmp", "HOME": "/nonexistent"}
    r = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", py, "-c", NONROOT_SCRIPT],
                       capture_output=True, text=True, env=env, cwd=str(pkg), timeout=60)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "['bin', 'box', 'dev', 'lib', 'lib64', 'proc', 'sbin', 'tmp', 'usr']" in r.stdout or "'box'" in r.stdout
    assert "nonet" in r.stdout and "nofork" in r.stdout and "'home'" not in r.stdout and "'root'" not in r.stdout
