"""README's library example must run as written."""

import ast
import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_library_example_runs(tmp_path: Path) -> None:
    text = README.read_text(encoding="utf-8")
    section = text.split("## ElaLoRA as a library", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    script = tmp_path / "example.py"
    script.write_text(code.replace("/tmp/elalora-example", str(tmp_path / "out")), encoding="utf-8")
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "out" / "adapter" / "adapter_config.json").is_file()
    # The round history line proves rounds happened under the Trainer with no manual call.
    assert "'pruned'" in proc.stdout and "'grown'" in proc.stdout, proc.stdout
    # "ranks moved during training": the printed rank map is no longer r_init everywhere, at the same total rank.
    r_init = int(re.search(r"r_init=(\d+)", code).group(1))
    ranks = next(ast.literal_eval(line) for line in proc.stdout.splitlines() if line.startswith("{'bert."))
    assert set(ranks.values()) != {r_init} and sum(ranks.values()) == r_init * len(ranks), ranks
