"""`kovocab shard --engine datatrove`: the local engine's task stages run by datatrove's
LocalPipelineExecutor (2 workers, 4 ranks per stage) write the serial engine's bytes on real
NSMC reviews and formal Korean; a SIGKILLed run resumes to the same bytes; clear errors."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import datatrove  # noqa: F401  (the [test] extra installs it: missing, these tests fail, never skip)
import pytest
from test_corpus_engine import _recipe, config, nsmc_5k, serial  # noqa: F401  (fixtures)
from test_corpus_pipeline import _wait, digests, manifest_without_out

from kovocab.cli import main


def test_datatrove_engine_resumes_a_killed_run_to_the_serial_bytes(tmp_path, nsmc_5k, serial) -> None:  # noqa: F811
    cfg = config(tmp_path / "out", nsmc_5k)
    argv = ["shard", "--engine", "datatrove", "--workers", "2", "--tasks", "4", "-q",
            "--recipe", str(_recipe(tmp_path, cfg))]
    out, work, logs = cfg.out, cfg.out / ".work", Path(f"{cfg.out}.datatrove")
    # Killed (driver, datatrove's pool and its manager: the process group) once the first
    # shard of the write stage is written: read and dedup are complete, write is not.
    proc = subprocess.Popen([sys.executable, "-m", "kovocab", *argv], start_new_session=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    caught = _wait(lambda: list(work.glob("*-shard-*.json")), proc, timeout_s=120)
    if caught:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert caught, "the run finished before the first shard's marker was seen: nothing was killed"
    assert not (out / "manifest.json").exists()
    assert len(list(logs.glob("*-4/read/completions/*"))) == 4  # datatrove marked read done
    assert main(argv) == 0
    assert digests(out) == digests(serial)
    assert manifest_without_out(out) == manifest_without_out(serial)
    assert not work.exists() and not list(out.glob(".*.tmp"))
    for stage, ranks in (("read", 4), ("dedup", 4), ("write", 4), ("finish", 1)):
        assert len(list(logs.glob(f"*-4/{stage}/completions/*"))) == ranks, stage
    # A finished folder: datatrove skips every rank, nothing changes.
    assert main(argv) == 0 and digests(out) == digests(serial)


def test_datatrove_engine_errors(tmp_path, nsmc_5k, monkeypatch, capsys) -> None:  # noqa: F811
    from kovocab.corpus.on_datatrove import ShardStage, check_stages_done, shard_executors

    cfg = config(tmp_path / "out", nsmc_5k)
    # dedup before read: the stage's input is incomplete.
    with pytest.raises(Exception, match="stage read is not complete"):
        list(ShardStage(cfg, "dedup").run(None, 0, 1))
    # finish after ranks marked done whose files are gone: says which stage and what to remove.
    with pytest.raises(Exception, match=r"stage read is not complete .* remove .*\.datatrove"):
        check_stages_done(cfg, Path(f"{cfg.out}.datatrove"))
    # Completion files that outlive the output folder (removed by hand) are not trusted:
    # building the executors removes them, so the stages run again.
    logs = Path(f"{cfg.out}.datatrove")
    chain = shard_executors(cfg, tasks=1, workers=1)
    chain[0].mark_rank_as_completed(0)
    assert list(logs.glob("*-1/read/completions/00000"))
    shard_executors(cfg, tasks=1, workers=1)
    assert not list(logs.glob("*-1/read/completions/*"))
    # --tasks belongs to --engine datatrove; datatrove's ranks replace --task/--num-tasks.
    x = str(tmp_path / "x")
    assert main(["shard", "--engine", "local", "--tasks", "2", "--out", x, str(nsmc_5k)]) == 1
    assert main(["shard", "--engine", "datatrove", "--task", "0", "--num-tasks", "2", "--out", x,
                 str(nsmc_5k)]) == 1
    assert "--engine datatrove runs every stage" in capsys.readouterr().err
    # Without datatrove installed: which extra to install.
    for name in [n for n in sys.modules if n.split(".")[0] == "datatrove"]:
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.delitem(sys.modules, "kovocab.corpus.on_datatrove")
    assert main(["shard", "--engine", "datatrove", "--out", x, str(nsmc_5k)]) == 1
    assert "pip install 'kovocab[datatrove]'" in capsys.readouterr().err
