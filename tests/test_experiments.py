"""The experiments' shared output writer."""
from __future__ import annotations

import json

from xadv.experiments import write_outputs


def test_write_outputs_writes_markdown_and_json(tmp_path):
    res = {"rows": [{"attack": "PGD", "success_rate": 0.5}], "seconds": {"gradient": 1.5}, "markdown": "x"}
    write_outputs(tmp_path / "out", "attacks", "| a |\n", res)
    assert (tmp_path / "out" / "attacks.md").read_text() == "| a |\n"
    back = json.loads((tmp_path / "out" / "attacks.json").read_text())
    assert back == {"rows": res["rows"], "seconds": res["seconds"]}


def test_write_outputs_without_a_folder_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_outputs(None, "fooling", "text", {"rows": [], "seconds": {}})
    assert list(tmp_path.iterdir()) == []
