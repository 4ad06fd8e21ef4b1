"""notebooks/quickstart.ipynb executes top to bottom on CPU (fast mode, 2 emulated devices), outputs stripped."""
import os
import re

import nbclient
import nbformat
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOK = os.path.join(ROOT, "notebooks", "quickstart.ipynb")


def _text(cell):
  out = []
  for o in cell.get("outputs", []):
    if o.output_type == "stream":
      out.append(o.text)
    elif o.output_type in ("execute_result", "display_data"):
      out.append(o.data.get("text/plain", ""))
  return "".join(out)


def test_notebook_is_stored_without_outputs():
  nb = nbformat.read(NOTEBOOK, as_version=4)
  nbformat.validate(nb)
  code = [c for c in nb.cells if c.cell_type == "code"]
  assert code and all(not c.outputs and c.execution_count is None for c in code)


@pytest.mark.timeout(1800)   # ~2-3 min on 2 idle cores; a shared, loaded machine can take many times that
def test_quickstart_notebook_runs_on_cpu(tmp_path, monkeypatch):
  monkeypatch.setenv("RLVR_NOTEBOOK_FAST", "1")
  monkeypatch.setenv("RLVR_NOTEBOOK_RUNS", str(tmp_path))
  monkeypatch.setenv("JAX_PLATFORMS", "cpu")
  monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=2")   # the mesh cell gets 2 devices
  monkeypatch.setenv("PYTHONPATH", ROOT)        # the tests run from the repository without installing it
  monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
  nb = nbformat.read(NOTEBOOK, as_version=4)
  nbclient.NotebookClient(nb, timeout=1200, kernel_name="python3",
                          resources={"metadata": {"path": os.path.join(ROOT, "notebooks")}}).execute()
  code = [c for c in nb.cells if c.cell_type == "code"]
  texts = [_text(c) for c in code]
  everything = "\n".join(texts)
  assert "fast mode: True" in texts[0]
  assert "metrics.jsonl" in texts[1] and "pass_at_k.png" in texts[1]               # the tiny run's workdir
  assert any("image/png" in o.get("data", {}) for o in code[2].outputs)            # the metrics plot, inline
  assert "NSR: sampled-token gradient > 0 (descent lowers it) on all kept tokens: True" in texts[3]
  assert len(re.findall(r"^sample \d \(\d+ tokens", texts[4], flags=re.M)) == 4       # a group of 4 completions
  assert "step 1: reward" in texts[5]                                               # one GRPO step on SmolLM2
  assert "mesh: {'data': 1, 'fsdp': 2" in texts[6] and "split over 2 device(s)" in texts[6], everything
  runs = sorted(os.listdir(tmp_path))
  assert [r.split("-")[1] for r in runs] == ["mesh", "smollm2", "tiny"], runs
