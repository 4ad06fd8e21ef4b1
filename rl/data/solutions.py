"""Offline solutions store: known-correct solutions per problem id (for offline sample injection).

File format: JSONL, one solution per line: {"id": "<problem id>", "solution": "<completion text>"}.
Several lines may share an id.

    store = SolutionStore.load("solutions.jsonl")
    store.get(problem.id) -> list[str]       # [] when the problem has none
    SolutionStore.from_problems(task.train_problems)   # the problems' own .solution fields
    store.save(path)
"""
import json
from collections import defaultdict
from typing import Iterable


class SolutionStore:
    def __init__(self, solutions: dict | None = None):
        self._by_id: dict[str, list[str]] = defaultdict(list)
        for pid, sols in (solutions or {}).items():
            self._by_id[str(pid)].extend(sols)

    @classmethod
    def load(cls, path: str, *, id_key: str = "id", solution_key: str = "solution") -> "SolutionStore":
        """Reads a JSONL file; a bad line raises ValueError naming the file and line."""
        store = cls()
        with open(path, encoding="utf-8") as f:
            for lineno, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError as e:
                    raise ValueError(f"{path}:{lineno}: invalid JSON ({e.msg} at column {e.colno})") from None
                if not isinstance(rec, dict) or not isinstance(rec.get(solution_key), str) or id_key not in rec:
                    raise ValueError(f"{path}:{lineno}: expected {{{id_key!r}: ..., {solution_key!r}: str}}")
                store.add(str(rec[id_key]), rec[solution_key])
        return store

    @classmethod
    def from_problems(cls, problems: Iterable) -> "SolutionStore":
        store = cls()
        for p in problems:
            if p.solution:
                store.add(p.id, p.solution)
        return store

    def add(self, problem_id: str, solution: str):
        self._by_id[str(problem_id)].append(solution)

    def get(self, problem_id: str) -> list[str]:
        """Solutions for `problem_id` (a copy; empty list if none)."""
        return list(self._by_id.get(str(problem_id), ()))

    def __contains__(self, problem_id) -> bool:
        return bool(self._by_id.get(str(problem_id)))

    def __len__(self) -> int:
        return sum(len(v) for v in self._by_id.values())

    def save(self, path: str):
        with open(path, "w", encoding="utf-8") as f:
            for pid, sols in self._by_id.items():
                for s in sols:
                    f.write(json.dumps({"id": pid, "solution": s}) + "\n")
