"""`distill run --smoke`: what the user set stays, the rest shrinks, and one stderr line
`distill: smoke: ...` says which, printed only once the input has passed its checks (the
runner is replaced here: nothing trains)."""

from __future__ import annotations

from helpers.reports import GOOD_REPORT

from distill.jobs import cli


def test_smoke_keeps_explicit_settings_and_says_what_it_changed(monkeypatch, capsys, tmp_path):
    import distill.jobs.run

    seen = {}

    def fake_run_job(spec, output=None, *, on_checked=None, **_):
        assert capsys.readouterr().err == ""  # nothing printed before the checks pass
        seen["spec"] = spec
        on_checked()
        return GOOD_REPORT

    monkeypatch.setattr(distill.jobs.run, "run_job", fake_run_job)
    config = tmp_path / "job.yaml"
    config.write_text("training: {checkpoint_every: 40, eval_every: 30}\n")
    sets = ["training.steps=7", "training.checkpoint_every=40"]
    code = cli.main(["run", str(config), "--smoke", "--set", *sets])
    assert code == 0
    t = seen["spec"].training
    # --set: kept; the config file's eval_every: capped like an unset field.
    assert (t.steps, t.checkpoint_every, t.eval_every) == (7, 40, 10)
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith("distill: smoke: training.warmup_steps 10 -> 2, ")
    assert "training.eval_every 30 -> 10" in line
    assert line.endswith("kept as set: training.checkpoint_every=40")  # 7 is below the cap
