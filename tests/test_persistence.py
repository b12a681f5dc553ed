"""Loading never runs code; writes are atomic; output folders are locked and never mix runs."""
from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

import xadv
from xadv import _io
from xadv.cli import main as cli_main
from xadv.defenses.training import TrainingResult
from xadv.detectors import (Detector, ExplanationAutoencoder, KDBUDetector, LOODetector, MahalanobisDetector,
                            SaliencyDetector, ShapSignatureDetector, XEnsemble)
from xadv.explanation import Explanation
from xadv.results import AttackResult, DetectionReport, FoolingResult


class _Payload:
    """A pickle that writes a marker file when it is unpickled."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _crafted(tmp_path: Path, kind: str) -> tuple:
    marker = tmp_path / f"ran-{kind}"
    evil = {"__xadv__": "Explanation", "__xadv_detector__": "SaliencyDetector", "x": _Payload(marker)}
    if kind == "torch":
        p = tmp_path / "evil.pt"
        torch.save(evil, p)
    elif kind == "state_dict":
        p = tmp_path / "evil_sd.pt"
        torch.save({"state_dict": {"w": _Payload(marker)}}, p)
    else:
        p = tmp_path / "evil.pkl"
        p.write_bytes(pickle.dumps(evil, protocol=2))
    return p, marker


LOADERS = {
    "Explanation.load": lambda p: Explanation.load(p),
    "AttackResult.load": lambda p: AttackResult.load(p),
    "FoolingResult.load": lambda p: FoolingResult.load(p),
    "DetectionReport.load": lambda p: DetectionReport.load(p),
    "TrainingResult.load": lambda p: TrainingResult.load(p),
    "Detector.load": lambda p: Detector.load(p),
    **{f"{k.__name__}.load": (lambda k: lambda p: k.load(p))(k)
       for k in (SaliencyDetector, XEnsemble, LOODetector, ShapSignatureDetector, ExplanationAutoencoder,
                 MahalanobisDetector, KDBUDetector)},
    "zoo weights": lambda p: xadv.zoo.digits_cnn(weights=p),
    "state_dict file": lambda p: _io.load_state_dict_file(p),
    "tensor file": lambda p: _io.load_tensor_file(p),
}


@pytest.mark.parametrize("kind", ["torch", "pickle", "state_dict"])
@pytest.mark.parametrize("name", sorted(LOADERS))
def test_crafted_file_never_runs(tmp_path, name, kind):
    path, marker = _crafted(tmp_path, kind)
    with pytest.raises((ValueError, FileNotFoundError)) as err:
        LOADERS[name](path)
    assert not marker.exists(), f"{name} executed code from a crafted {kind} file"
    assert str(path) in str(err.value) or "weights" in str(err.value)


@pytest.mark.parametrize("args", [["--weights", "{p}"], ["--model", "xadv.zoo:digits_cnn", "--weights", "{p}"],
                                  ["--model", "xadv.zoo:digits_cnn", "--input", "{p}"]])
def test_cli_crafted_weights_and_inputs_never_run(tmp_path, capsys, args):
    path, marker = _crafted(tmp_path, "torch")
    argv = ["explain"] + [a.format(p=path) for a in args] + ["--out", str(tmp_path / "x.png")]
    assert cli_main(argv) == 2
    assert not marker.exists()
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "error" in err[0]


def test_old_format_needs_trust(tmp_path):
    e = Explanation(torch.rand(2, 3), torch.rand(2, 3), torch.tensor([0, 1]), torch.rand(2, 2), "saliency",
                    {"layer": None})
    old = tmp_path / "old.pt"
    payload = {"__xadv__": "Explanation", "version": 1, **{k: getattr(e, k) for k in
                                                           ("attributions", "inputs", "target", "output", "method",
                                                            "params")},
               "extras": {"obj": _Payload(tmp_path / "never")}}
    torch.save(payload, old)
    with pytest.raises(ValueError, match="trust=True"):
        Explanation.load(old)
    plain = tmp_path / "plain.pt"  # an old file of tensors and plain data loads safely without trust
    torch.save({k: v for k, v in payload.items() if k != "extras"}, plain)
    back = Explanation.load(plain)
    assert torch.equal(back.attributions, e.attributions)


def test_round_trip_keeps_types(tmp_path):
    e = Explanation(torch.rand(2, 1, 4, 4, dtype=torch.float64), torch.rand(2, 1, 4, 4), torch.tensor([0, 1]),
                    torch.rand(2, 3), "ig", {"steps": 4, "baseline": torch.zeros(1), "t": (1, 2), "f": float("nan")},
                    extras={"raw": torch.rand(2, 2, 2)})
    back = Explanation.load(e.save(tmp_path / "e.xadv"))
    assert back.attributions.dtype == torch.float64 and torch.equal(back.attributions, e.attributions)
    assert back.params["t"] == (1, 2) and back.params["steps"] == 4
    assert torch.equal(back.extras["raw"], e.extras["raw"])
    with pytest.raises(ValueError, match="not an xadv AttackResult"):
        AttackResult.load(tmp_path / "e.xadv")


class UserLayer(torch.nn.Module):
    def forward(self, x):
        return x


def test_unsaveable_value_is_a_clear_error(tmp_path):
    e = Explanation(torch.rand(1, 2), torch.rand(1, 2), torch.tensor([0]), torch.rand(1, 2), "x",
                    {"layer": UserLayer()})
    with pytest.raises(TypeError, match="cannot save the module .*UserLayer.*state_dict"):
        e.save(tmp_path / "e.xadv")
    assert not (tmp_path / "e.xadv").exists()


# ------------------------------------------------------------------ atomic writes
_WRITER = textwrap.dedent("""
    import sys, time
    from xadv._io import atomic_write
    with atomic_write(sys.argv[1], "wb") as f:
        for _ in range(10000):
            f.write(b"n" * 65536)
            f.flush()
            print("writing", flush=True)
            time.sleep(0.01)
""")


def test_killed_writer_leaves_old_file_intact(tmp_path):
    target = tmp_path / "result.bin"
    target.write_bytes(b"old good content")
    env = dict(os.environ, PYTHONPATH=str(Path(xadv.__file__).parents[1]))
    proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(target)], stdout=subprocess.PIPE, env=env)
    for _ in range(3):
        proc.stdout.readline()
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    proc.stdout.close()
    assert target.read_bytes() == b"old good content"


def test_failed_write_removes_temp_and_keeps_old(tmp_path):
    target = tmp_path / "a.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with _io.atomic_write(target, "w") as f:
            f.write("half")
            raise RuntimeError("disk on fire")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"]


# ------------------------------------------------------------------ output folders
def test_folder_manifest_lock_and_seed_mixing(tmp_path):
    out = tmp_path / "run"
    with _io.OutputFolder(out, "xadv demo", seed=0, settings={"fast": True}) as folder:
        _io.write_text(out / "report.md", "hello")
        folder.mark("explain")
        with pytest.raises(_io.FolderError, match="in use by another xadv process"):
            _io.OutputFolder(out, "xadv demo", seed=0, settings={"fast": True}).__enter__()
    man = _io.OutputFolder(out, "xadv demo", seed=0).read()
    assert man["complete"] and man["done"] == ["explain"] and man["seed"] == 0
    assert man["files"]["report.md"] == _io.sha256(out / "report.md")
    assert not (out / ".xadv.lock").exists()
    with pytest.raises(_io.FolderError, match="another run.*new --out"):
        with _io.OutputFolder(out, "xadv demo", seed=1, settings={"fast": True}):
            pass
    with _io.OutputFolder(out, "xadv demo", seed=0, settings={"fast": True}) as again:  # same run: resume
        assert again.done == ["explain"]


def test_stale_lock_of_killed_run_is_taken_over(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    (out / ".xadv.lock").write_text(str(proc.pid))
    with _io.OutputFolder(out, "xadv demo", seed=0):
        pass


def test_cli_out_is_a_file_and_readonly_folder_exit_2(tmp_path, capsys):
    f = tmp_path / "file"
    f.write_text("x")
    assert cli_main(["attack", "--n", "2", "--out", str(f)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is a file, not a folder" in err[0]
    if os.geteuid() == 0:
        pytest.skip("root ignores folder permissions")
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        assert cli_main(["attack", "--n", "2", "--out", str(ro / "sub")]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "cannot write output" in err[0]
    finally:
        ro.chmod(0o700)


@pytest.mark.parametrize("code,words", [("ENOSPC", "no space left"), ("EROFS", "read-only file system")])
def test_cli_disk_full_or_readonly_is_one_line(tmp_path, capsys, monkeypatch, code, words):
    import errno

    def full(*a, **k):
        raise OSError(getattr(errno, code), os.strerror(getattr(errno, code)), str(tmp_path / "x"))

    monkeypatch.setattr(_io, "write_bytes", full)
    assert cli_main(["attack", "--n", "2", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and words in err[0]


def test_cli_negative_n_refused(capsys):
    with pytest.raises(SystemExit) as e:
        cli_main(["attack", "--n", "-5", "--out", "unused"])
    assert e.value.code == 2
    assert "must be >= 1" in capsys.readouterr().err


def test_a_refused_command_leaves_no_claim_on_its_folder(tmp_path, capsys):
    from xadv.cli import main

    out = tmp_path / "o"
    # refused before anything is written (deepfool has no budget): no manifest is left behind ...
    assert main(["attack", "--attack", "deepfool", "--eps", "0.1", "--out", str(out)]) == 2
    assert not (out / "manifest.json").exists()
    # ... so the same folder takes another command's (equally refused) run and says why
    assert main(["attack", "--attack", "fgsm", "--steps", "3", "--out", str(out)]) == 2
    assert "single step" in capsys.readouterr().err
