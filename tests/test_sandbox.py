"""Code sandbox: each attack yields reward 0 and leaves the host untouched."""
import os
import time

import pytest

from rl.rewards import code

T = 1.5  # wall-clock limit per run in these tests
FULL = code.SANDBOX_LEVEL == "namespaces+uid"


def _fence(src):
    return f"```python\n{src}\n```"


def test_correct_partial_syntax_error():
    tests = [{"input": "2 3\n", "output": "5"}, {"input": "10 -4\n", "output": "6\n"}]
    good = "a, b = map(int, input().split())\nprint(a + b)"
    assert code.score(_fence(good), tests, timeout=T) == (1.0, True, good + "\n")
    half = "a, b = map(int, input().split())\nprint(5)"
    assert code.score(_fence(half), tests, timeout=T).reward == 0.5
    assert code.score(_fence("def f(:\n  pass"), tests, timeout=T).reward == 0.0
    assert code.score("no code here", tests, timeout=T) == code.INCORRECT


def test_infinite_loop_killed():
    t0 = time.monotonic()
    s = code.score(_fence("while True:\n    pass"), [{"input": "", "output": ""}], timeout=T)
    assert s.reward == 0.0 and time.monotonic() - t0 < T + 2.0
    r = code.run_sandboxed("import time\ntime.sleep(100)", timeout=0.5)
    assert r.timed_out and r.returncode is None


def test_fork_attempt(tmp_path):
    marker = tmp_path / "forked"
    src = (f"import subprocess\nsubprocess.run(['touch', {str(marker)!r}])\nprint('ok')\n")
    assert code.score(_fence(src), [{"output": "ok"}], timeout=T).reward == 0.0
    src = "import os\npid = os.fork()\nprint('ok')"
    assert code.score(_fence(src), [{"output": "ok"}], timeout=T).reward == 0.0
    assert not marker.exists()


def test_huge_allocation():
    src = "x = bytearray(8 << 30)\nprint('ok')"
    assert code.score(_fence(src), [{"output": "ok"}], timeout=T, memory_mb=256).reward == 0.0


@pytest.mark.skipif(not FULL, reason="needs root + unshare/setpriv (read-only root file system for the sandbox)")
def test_write_outside_tempdir(tmp_path):
    victims = [tmp_path / "pwned", "/tmp/rl_sandbox_pwned", os.path.join(os.getcwd(), "rl_sandbox_pwned")]
    src = "\n".join(f"open({str(v)!r}, 'w').write('x')" for v in victims) + "\nprint('ok')"
    for v in victims:  # each write alone fails, so the program never prints ok
        one = f"open({str(v)!r}, 'w').write('x')\nprint('ok')"
        assert code.score(_fence(one), [{"output": "ok"}], timeout=T).reward == 0.0
    assert code.score(_fence(src), [{"output": "ok"}], timeout=T).reward == 0.0
    assert not any(os.path.exists(v) for v in victims)
    # writing in its own directory works, and the directory is removed afterwards
    r = code.run_sandboxed("import os\nopen('f.txt','w').write('x')\nprint(os.getcwd())", timeout=T)
    assert r.returncode == 0 and not os.path.exists(r.stdout.strip())


def test_environment_not_inherited(monkeypatch):
    monkeypatch.setenv("RL_TEST_SECRET", "hunter2")
    src = "import os\nprint(os.environ.get('RL_TEST_SECRET', 'none'))"
    assert code.score(_fence(src), [{"output": "hunter2"}], timeout=T).reward == 0.0
    r = code.run_sandboxed(src, timeout=T)
    assert r.stdout.strip() == "none"


@pytest.mark.skipif(not FULL, reason="needs root + unshare (private network namespace)")
def test_no_network():
    src = ("import socket\ns = socket.socket()\ns.settimeout(1)\n"
           "try:\n    s.connect(('1.1.1.1', 80)); print('connected')\nexcept OSError as e:\n    print('blocked')")
    assert code.run_sandboxed(src, timeout=T).stdout.strip() == "blocked"
