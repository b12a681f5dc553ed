"""xadv.sweep: grid expansion, the DuckDB store, resume after SIGKILL, failures, change detection, Ray."""
from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

duckdb = pytest.importorskip("duckdb")

import xadv.sweep as sw  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]

TINY = {"name": "tiny", "data": {"name": "digits", "n": 12},
        "blocks": [{"label": "atk", "kind": "attack", "attacks": ["FGSM", {"name": "PGD", "steps": 3}],
                    "budgets": [0.1, 0.2], "seeds": [0, 1]},
                   {"label": "fool", "kind": "fooling", "attacks": [{"name": "random-sign", "steps": 2}],
                    "explainers": ["saliency"], "budgets": [0.05], "data": {"name": "digits", "n": 4}}]}


def _rows(db):
    with sw.Store(db, read_only=True) as st:
        return st.rows()


def _same(a, b):
    assert len(a) == len(b)
    for ra, rb in zip(a, b):
        assert ra.keys() == rb.keys()
        for k in ra:
            x, y = ra[k], rb[k]
            assert (isinstance(x, float) and isinstance(y, float) and math.isnan(x) and math.isnan(y)) or x == y, k


def test_expand_keys_stable_and_errors(tmp_path):
    cells = sw.expand(TINY)
    assert len(cells) == 2 * 2 * 2 + 1
    assert len({c["key"] for c in cells}) == len(cells)
    # the same grid written as TOML gives the same keys; key order inside specs does not matter
    toml = tmp_path / "g.toml"
    toml.write_text(textwrap.dedent("""
        name = "tiny"
        data = {n = 12, name = "digits"}
        [[blocks]]
        label = "atk"
        kind = "attack"
        attacks = ["FGSM", {steps = 3, name = "PGD"}]
        budgets = [0.1, 0.2]
        seeds = [0, 1]
        [[blocks]]
        label = "fool"
        kind = "fooling"
        attacks = [{name = "random-sign", steps = 2}]
        explainers = ["saliency"]
        budgets = [0.05]
        data = {name = "digits", n = 4}
    """))
    assert [c["key"] for c in sw.expand(toml)] == [c["key"] for c in cells]
    try:
        import yaml
    except ImportError:
        yaml = None
    if yaml is not None:
        y = tmp_path / "g.yaml"
        y.write_text(yaml.safe_dump(TINY))
        assert [c["key"] for c in sw.expand(y)] == [c["key"] for c in cells]
    with pytest.raises(sw.GridError, match="kind"):
        sw.expand({"name": "g", "kind": "nope", "attacks": ["FGSM"]})
    with pytest.raises(sw.GridError, match="needs 'explainers'"):
        sw.expand({"name": "g", "kind": "fooling", "attacks": ["topk"]})
    with pytest.raises(sw.GridError, match="unknown keys"):
        sw.expand({"name": "g", "kind": "attack", "attacks": ["FGSM"], "budget": [0.1]})
    with pytest.raises(sw.GridError, match="do not apply"):
        sw.expand({"name": "g", "kind": "attack", "attacks": ["FGSM"], "metrics": ["aopc"]})
    with pytest.raises(sw.GridError, match="does not exist"):
        sw.expand(str(tmp_path / "missing.toml"))
    assert len(sw.expand("attacks")) > 40            # the shipped grid


def test_cell_matches_direct_call():
    """A cell's row is the attack's own result on the same data (the machinery adds nothing)."""
    import torch

    from xadv.attacks import PGD
    from xadv.data import load_digits
    from xadv.zoo import digits_cnn

    p = sw.expand({"name": "g", "kind": "attack", "attacks": [{"name": "PGD", "steps": 3}], "budgets": [0.1],
                   "seeds": [3], "data": {"name": "digits", "n": 10}})[0]["params"]
    (row,) = sw.run_cell(p)
    m = digits_cnn()
    x, y = load_digits("test")
    with torch.no_grad():
        ok = m(x).argmax(1) == y
    x, y = x[ok][:10], y[ok][:10]
    torch.manual_seed(3)
    res = PGD(eps=0.1, steps=3, seed=3)(m, x, y)
    assert row["success_rate"] == pytest.approx(res.success_rate, abs=0)
    assert row["robust_accuracy"] == pytest.approx(float((res.pred_adv == y).float().mean()))
    assert row["mean_linf"] == pytest.approx(float(res.norms["linf"][res.success].double().mean()))


def test_failing_cell_recorded_and_grid_goes_on(tmp_path):
    db = tmp_path / "f.duckdb"
    g = {"name": "f", "data": {"name": "digits", "n": 8},
         "blocks": [{"kind": "attack", "attacks": ["FGSM"], "budgets": [0.1, 0.2]},
                    {"label": "bad", "kind": "attack", "attacks": ["no_such_attack"], "budgets": [0.1]}]}
    s = sw.run(g, db, progress=False)
    assert (s["done"], s["failed"]) == (2, 1)
    st = sw.status(db)
    assert st["counts"] == {"done": 2, "failed": 1}
    (f,) = st["failed"]
    assert "unknown attack 'no_such_attack'" in f["error"]
    with sw.Store(db, read_only=True) as store:
        (c,) = store.cells("failed")
        assert "Traceback" in c["traceback"] and c["finished"] is not None
        assert store.con.execute("SELECT count(*) FROM results WHERE cell_key = ?", [c["key"]]).fetchone()[0] == 0
    # without resume an existing database is refused; resume re-runs only the failed cell
    with pytest.raises(sw.SweepError, match="resume"):
        sw.run(g, db, progress=False)
    s2 = sw.run(g, db, progress=False, resume=True)
    assert (s2["ran"], s2["skipped"], s2["failed"]) == (1, 2, 1)
    with sw.Store(db, read_only=True) as store:
        assert store.cells("failed")[0]["attempts"] == 2
        assert {c["attempts"] for c in store.cells("done")} == {1}


def test_version_and_grid_change_detected(tmp_path):
    db = tmp_path / "v.duckdb"
    g = {"name": "v", "kind": "attack", "attacks": ["FGSM"], "budgets": [0.1], "data": {"name": "digits", "n": 8}}
    sw.run(g, db, progress=False)
    g2 = dict(g, budgets=[0.1, 0.2])
    with pytest.raises(sw.SweepError, match="grid changed: 1 new cell"):
        sw.run(g2, db, progress=False, resume=True)
    s = sw.run(g2, db, progress=False, resume=True, allow_changes=True)
    assert s["ran"] == 1 and s["skipped"] == 1 and "grid changed" in s["notes"][0]
    with sw.Store(db) as st:
        st.set_meta(xadv_version="0.0.1")
    with pytest.raises(sw.SweepError, match="xadv version changed: the database was written by xadv 0.0.1"):
        sw.run(g2, db, progress=False, resume=True)
    s = sw.run(g2, db, progress=False, resume=True, allow_changes=True)
    assert s["ran"] == 0 and "version" in s["notes"][0]


_CHILD = textwrap.dedent("""
    import sys, xadv.sweep as sw
    def cb(out):
        print("committed", out["key"], flush=True)
    sw.run({grid!r}, {db!r}, progress=False, callback=cb)
""")


@pytest.mark.slow
def test_sigkill_then_resume(tmp_path):
    """Kill the driver with SIGKILL after two committed cells; resume finishes the grid, keeps the
    finished cells (same timestamps, one attempt) and leaves neither duplicate nor partial rows."""
    db = str(tmp_path / "k.duckdb")
    grid = {"name": "kill", "kind": "attack", "attacks": [{"name": "PGD", "steps": 10}], "data": {"name": "digits",
            "n": 32}, "budgets": [0.02, 0.04, 0.06, 0.08, 0.1, 0.12], "seeds": [0]}
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    child = subprocess.Popen([sys.executable, "-c", _CHILD.format(grid=grid, db=db)], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, env=env, cwd=str(tmp_path))
    committed = []
    t0 = time.time()
    while len(committed) < 2 and time.time() - t0 < 120:
        line = child.stdout.readline()
        if not line:
            break
        if line.startswith("committed"):
            committed.append(line.split()[1])
    child.send_signal(signal.SIGKILL)
    child.wait(30)
    err = child.stderr.read()
    child.stdout.close()
    child.stderr.close()
    assert len(committed) == 2, err
    with sw.Store(db, read_only=True) as st:
        before = {c["key"]: c for c in st.cells()}
    done_before = {k for k, c in before.items() if c["status"] == "done"}
    assert set(committed) <= done_before and len(done_before) < 6
    # the cell it was killed in is 'running' (or still 'pending' if the kill came between two cells)
    assert {c["status"] for k, c in before.items() if k not in done_before} <= {"running", "pending"}
    s = sw.run(grid, db, progress=False, resume=True)
    assert s["skipped"] == len(done_before) and s["ran"] == 6 - len(done_before) and s["failed"] == 0
    with sw.Store(db, read_only=True) as st:
        after = {c["key"]: c for c in st.cells()}
        assert {c["status"] for c in after.values()} == {"done"}
        for k in done_before:                                           # not recomputed
            assert after[k]["finished"] == before[k]["finished"] and after[k]["attempts"] == 1
        assert all(after[k]["attempts"] == before[k]["attempts"] + 1 for k in before if k not in done_before)
        dup = st.con.execute("SELECT count(*) FROM (SELECT cell_key, row, metric, count(*) AS n FROM results "
                             "GROUP BY ALL HAVING n > 1)").fetchone()[0]
        per_cell = st.con.execute("SELECT cell_key, count(*) FROM results GROUP BY cell_key").fetchall()
    assert dup == 0
    assert len(per_cell) == 6 and {n for _, n in per_cell} == {7}      # 7 metrics per attack row, every cell
    # the resumed database equals an uninterrupted run
    db2 = str(tmp_path / "clean.duckdb")
    sw.run(grid, db2, progress=False)
    _same(_rows(db), _rows(db2))


@pytest.mark.slow
def test_process_pool_equals_sequential(tmp_path):
    a, b = tmp_path / "a.duckdb", tmp_path / "b.duckdb"
    g = dict(TINY, blocks=TINY["blocks"][:1])
    sw.run(g, a, progress=False)
    sw.run(g, b, progress=False, workers=2)
    _same(_rows(a), _rows(b))


@pytest.mark.slow
def test_ray_equals_local(tmp_path):
    ray = pytest.importorskip("ray")
    a, b = tmp_path / "local.duckdb", tmp_path / "ray.duckdb"
    sw.run(TINY, a, progress=False)
    env = {"env_vars": {"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}}
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, runtime_env=env)
    try:
        s = sw.run(TINY, b, progress=False, backend="ray")
    finally:
        ray.shutdown()
    assert (s["done"], s["failed"]) == (9, 0)
    ra, rb = _rows(a), _rows(b)
    assert len(ra) == 9
    _same(ra, rb)
    with sw.Store(b, read_only=True) as st:
        assert {c["status"] for c in st.cells()} == {"done"}


def test_cli_and_report(tmp_path):
    from xadv.cli import main

    g = tmp_path / "g.json"
    g.write_text(json.dumps(dict(TINY, blocks=[dict(TINY["blocks"][0], explainers=None)][:0] or TINY["blocks"])))
    db = tmp_path / "c.duckdb"
    assert main(["sweep", "run", str(g), "--db", str(db), "--quiet"]) == 0
    assert main(["sweep", "run", str(g), "--db", str(db), "--quiet"]) == 2          # exists, no --resume
    assert main(["sweep", "run", str(g), "--db", str(db), "--quiet", "--resume"]) == 0
    assert main(["sweep", "status", "--db", str(db)]) == 0
    out = tmp_path / "rep"
    assert main(["sweep", "report", "--db", str(db), "--out", str(out)]) == 0
    md = (out / "report.md").read_text()
    assert "## atk (attack)" in md and "success_rate" in md and "| PGD(steps=3) |" in md
    assert "\\toprule" in (out / "tables.tex").read_text()
    assert (out / "atk_budget.png").is_file()


# ---------------------------------------------------------------------------- the experiments as grids
def _clean_rows(rows):
    """An experiment's rows as an experiment cell stores them: no timings, scalars only."""
    from xadv.sweep.cells import _scalar

    return [{k: _scalar(v) for k, v in r.items() if k != "seconds"} for r in rows]


def _same_rows(a, b):
    assert len(a) == len(b), (len(a), len(b))
    for ra, rb in zip(a, b):
        assert set(ra) == set(rb), set(ra) ^ set(rb)
        for k in ra:
            x, y = ra[k], rb[k]
            assert (isinstance(x, float) and isinstance(y, float) and math.isnan(x) and math.isnan(y)) or x == y, \
                (k, x, y)


def _experiment_grid(tmp_path, experiment, parts, settings):
    g = {"name": f"tiny-{experiment}", "blocks": [{"label": experiment, "kind": "experiment",
                                                   "experiment": experiment, "parts": parts,
                                                   "settings": settings, "seeds": [0]}]}
    db = tmp_path / f"{experiment}.duckdb"
    out = sw.run(g, db, progress=False)
    assert out["done"] == len(parts) and out["failed"] == 0, out
    from xadv.sweep.report import experiment_rows
    return db, experiment_rows(db)[experiment]["rows"]


def test_attacks_experiment_grid_gives_the_experiment_rows(tmp_path):
    import torch

    from xadv.experiments import attacks as X

    settings = {"n": 8, "n_slow": 4, "n_explainer": 4}
    parts = ["explainer", "deletion"]
    db, rows = _experiment_grid(tmp_path, "attacks", parts, settings)
    torch.set_num_threads(1)
    want = X.run(seed=0, sections=parts, **settings)
    _same_rows(rows, _clean_rows(want["rows"]))       # split into cells = one run of both sections
    rep = sw.report(db, tmp_path / "rep")
    md = Path(rep["markdown"]).read_text()
    assert X.to_markdown(_clean_rows(want["rows"])) in md      # the experiment's own tables
    assert "### ExplainerPGD" in md and "### Feature deletion" in md


def test_fooling_experiment_grid_gives_the_experiment_rows(tmp_path):
    import torch

    from xadv.experiments import fooling as X

    settings = {"n": 4, "n_heavy": 2, "steps": 2, "check_strength": False}
    db, rows = _experiment_grid(tmp_path, "fooling", ["input:saliency", "input:gradcam", "joint", "defense"],
                                settings)
    torch.set_num_threads(1)
    want = X.run(seed=0, sections=["input", "joint", "defense"], explainers=["saliency", "gradcam"], **settings)
    _same_rows(rows, _clean_rows(want["rows"]))
    md = Path(sw.report(db, tmp_path / "rep")["markdown"]).read_text()
    assert X.to_markdown(_clean_rows(want["rows"])) in md


def test_detection_experiment_grid_gives_the_experiment_rows(tmp_path):
    import torch

    from xadv.experiments import detection as X

    settings = {"n_train": 16, "n_test": 8, "n_adaptive": 4, "adaptive_steps": 2}
    parts = ["ML-LOO", "Mahalanobis"]
    db, rows = _experiment_grid(tmp_path, "detection", parts, settings)
    torch.set_num_threads(1)
    dets = X.default_detectors(0)
    want = X.run(seed=0, detectors={k: dets[k] for k in parts}, **settings)
    # one cell per detector = the detectors evaluated together (the experiment lists rows attack by attack,
    # the grid detector by detector)
    got = _clean_rows(want["rows"])
    _same_rows(rows, [r for d in parts for r in got if r["detector"] == d])
    md = Path(sw.report(db, tmp_path / "rep")["markdown"]).read_text()
    assert "| Mahalanobis |" in md and "| ML-LOO |" in md


def test_shipped_experiment_grids_expand_and_bad_blocks_are_refused():
    from xadv.experiments import attacks, detection, fooling

    for name, mod in (("attacks-experiment", attacks), ("fooling", fooling), ("detection", detection)):
        cells = sw.expand(name)
        assert [c["params"]["part"] for c in cells] == list(mod.PARTS)
        assert all(set(c["params"]["settings"]) <= set(mod.SETTINGS) for c in cells)
    kinds = {c["params"]["kind"] for c in sw.expand("attacks")}
    assert kinds == {"attack", "experiment"}
    parts = {c["params"].get("part") for c in sw.expand("attacks")} - {None}
    assert parts == {"suite", "blackbox", "universal"}   # every section of the experiment is in the grid
    base = {"name": "g", "kind": "experiment", "experiment": "fooling"}
    with pytest.raises(sw.GridError, match="unknown parts"):
        sw.expand({**base, "parts": ["inputs"]})
    with pytest.raises(sw.GridError, match="unknown settings \\['seed'\\]"):
        sw.expand({**base, "settings": {"seed": 3}})
    with pytest.raises(sw.GridError, match="'experiment' must be one of"):
        sw.expand({**base, "experiment": "evaluation"})
    assert len(sw.expand(base)) == len(fooling.PARTS)          # parts default to all of them


def test_yaml_grids_use_the_safe_loader_and_need_pyyaml(tmp_path, monkeypatch):
    yaml = pytest.importorskip("yaml")      # declared in the sweep and test extras

    y = tmp_path / "g.yaml"
    y.write_text(yaml.safe_dump(TINY))
    assert [c["key"] for c in sw.expand(y)] == [c["key"] for c in sw.expand(TINY)]
    marker = tmp_path / "ran"
    bad = tmp_path / "bad.yaml"
    bad.write_text(f"name: !!python/object/apply:os.system ['touch {marker}']\nkind: attack\n")
    with pytest.raises(sw.GridError, match="tags such as"):
        sw.expand(bad)
    assert not marker.exists()                # nothing in a grid file runs
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(sw.GridError, match="mapping at the top level"):
        sw.expand(tmp_path / "list.yaml")
    monkeypatch.setitem(sys.modules, "yaml", None)       # PyYAML not installed
    with pytest.raises(sw.GridError, match="needs PyYAML.*TOML or JSON"):
        sw.expand(y)
