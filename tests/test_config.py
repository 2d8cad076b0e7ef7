"""Config files that extend another config (`extends:` in pipeline/config.py)."""
from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.config import load_config, to_dict


def test_extends_takes_the_base_and_overrides_only_what_it_names(tmp_path: Path) -> None:
    f = tmp_path / "line7.yaml"
    f.write_text("extends: default\nscorer:\n  trim_fraction: 0.2\n  blur_sigma: 3.0\npretrain:\n  epochs: 5\n")
    got, base = to_dict(load_config(f)), to_dict(load_config("default"))
    assert got["name"] == "line7"
    assert got["scorer"]["trim_fraction"] == 0.2 and got["scorer"]["blur_sigma"] == 3.0 and got["pretrain"]["epochs"] == 5
    for section in ("encoder", "pretrain", "scorer"):
        for k, v in base[section].items():
            if (section, k) not in {("scorer", "trim_fraction"), ("scorer", "blur_sigma"), ("pretrain", "epochs")}:
                assert got[section][k] == v, (section, k)
    # overrides still apply on top, and a file can extend a file that extends
    g = tmp_path / "line7b.yaml"
    g.write_text("extends: line7.yaml\nscorer:\n  blur_sigma: 5.0\n")  # relative to g's folder, whatever the cwd
    assert load_config(g, {"scorer.seed": 3}).scorer.seed == 3
    assert load_config(g).scorer.blur_sigma == 5.0 and load_config(g).scorer.trim_fraction == 0.2


def test_extends_refuses_loops_and_unknown_bases(tmp_path: Path) -> None:
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    a.write_text(f"extends: {b}\n")
    b.write_text(f"extends: {a}\n")
    with pytest.raises(ValueError, match="loops"):
        load_config(a)
    c = tmp_path / "c.yaml"
    c.write_text("extends: nosuchconfig\n")
    with pytest.raises(ValueError, match="unknown config 'nosuchconfig'"):
        load_config(c)


def test_robust_config_is_default_with_the_trim(tmp_path: Path) -> None:
    """The shipped `robust` config pretrains exactly as `default` (so a default pretraining is reused) and trims."""
    from pipeline.steps import pretraining_settings

    robust, default = load_config("robust"), load_config("default")
    assert pretraining_settings(robust) == pretraining_settings(default)
    assert robust.scorer.trim_fraction == 0.15 and robust.scorer.trim_score == "leave_one_out"
    assert to_dict(robust.scorer) == {**to_dict(default.scorer), "trim_fraction": 0.15, "trim_score": "leave_one_out"}


def test_git_commit_ignores_benchmark_results(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A results file a benchmark appended to does not make the measured code "+dirty"; a code change does."""
    import shutil
    import subprocess

    import pipeline.steps as steps

    repo = tmp_path / "repo"
    (repo / "pipeline").mkdir(parents=True)
    (repo / "benchmarks/results").mkdir(parents=True)
    shutil.copy(steps.__file__, repo / "pipeline/steps.py")
    (repo / "benchmarks/results/r.json").write_text("{}")
    git = ["git", "-c", "user.email=t@t", "-c", "user.name=t"]
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    subprocess.run([*git, "add", "."], cwd=repo, check=True)
    subprocess.run([*git, "commit", "-qm", "x"], cwd=repo, check=True)
    monkeypatch.setattr(steps, "__file__", str(repo / "pipeline/steps.py"))
    assert not steps.git_commit().endswith("+dirty")
    (repo / "benchmarks/results/r.json").write_text('{"a": 1}')
    assert not steps.git_commit().endswith("+dirty")
    (repo / "pipeline/steps.py").write_text("# changed\n")
    assert steps.git_commit().endswith("+dirty")
