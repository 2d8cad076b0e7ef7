"""The robustness benchmark's derived splits (benchmarks/robustness.py): exact counts, no leaks, seeded."""
from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest

from pipeline.data.sources import load_samples

_SPEC = importlib.util.spec_from_file_location("robustness", Path(__file__).resolve().parents[1] / "benchmarks/robustness.py")
robustness = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(robustness)


def _split() -> dict[str, list]:
    train = [[f"good/t{i}.png", None, 0] for i in range(100)]
    test = [[f"good/g{i}.png", None, 0] for i in range(20)]
    for cls, n in (("crack", 30), ("spot", 10), ("dent", 5)):
        test += [[f"{cls}/d{i}.png", f"{cls}/d{i}_mask.png", 1, cls] for i in range(n)]
    return {"train": train, "test": test}


@pytest.mark.parametrize("fraction", [0.05, 0.1, 0.2])
def test_contaminate_counts_strata_and_no_leak(fraction: float) -> None:
    split = _split()
    new, moved = robustness.contaminate(split, fraction, seed=0)
    k = len(moved)
    assert k == math.ceil(fraction * 100 / (1 - fraction))
    assert k / len(new["train"]) >= fraction and (k - 1) / (len(new["train"]) - 1) < fraction  # the smallest such count
    # unlabeled in train: told good, no mask; gone from test; nothing else changed
    assert new["train"][:100] == split["train"] and all(r[1] is None and r[2] == 0 for r in new["train"][100:])
    moved_images = {r[0] for r in moved}
    assert {r[0] for r in new["train"][100:]} == moved_images
    assert not moved_images & {r[0] for r in new["test"]}
    assert len(new["test"]) == len(split["test"]) - k
    # spread over classes by their share (largest remainder), only defects moved
    counts = {c: sum(r[3] == c for r in moved) for c in ("crack", "spot", "dent")}
    assert all(r[2] == 1 for r in moved)
    for c, n in (("crack", 30), ("spot", 10), ("dent", 5)):
        assert abs(counts[c] - k * n / 45) < 1, counts
    assert robustness.contaminate(split, fraction, seed=0)[1] == moved  # seeded
    assert robustness.contaminate(split, fraction, seed=1)[1] != moved


def test_few_and_absolute_manifest_load(tmp_path: Path) -> None:
    small = robustness.few(_split(), 7, seed=3)
    assert len(small["train"]) == 7 and len({r[0] for r in small["train"]}) == 7 and small["test"] == _split()["test"]
    # absolute rows keep the defect class (the loader would read it from the path otherwise)
    root = tmp_path / "data"
    for rel in ("good/a.png", "crack/Imgs/b.png"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(b"")
    rows = robustness._absolute(root / "split.json", [["good/a.png", None, 0], ["crack/Imgs/b.png", None, 1]])
    assert rows == [[str(root / "good/a.png"), None, 0], [str(root / "crack/Imgs/b.png"), None, 1, "crack"]]
    (tmp_path / "m.json").write_text(json.dumps({"test": rows}))
    assert [s.defect_class for s in load_samples(tmp_path / "m.json", "test")] == ["good", "crack"]


def test_set_override_refits_a_reused_pretraining_into_a_tagged_folder(tiny_data: Path, tmp_path: Path) -> None:
    """`--set scorer.min_support=2` with the same --work: the pretraining is reused, the fit with the
    override lands in RUN_DIR-fit-TAG, and the plain fit is left alone."""
    import yaml

    from pipeline.config import load_config
    from pipeline.steps import pretrain_step

    manifest = tiny_data / "split.json"
    run_dir = tmp_path / "clean"
    pretrain_step(manifest, run_dir, load_config("smoke"), progress=False)
    overrides = {"scorer.min_support": 2}
    assert robustness._tag(overrides) == "scorer.min_support=2"
    fitted, cost = robustness.run(manifest, run_dir, "smoke", overrides)
    assert fitted == tmp_path / "clean-fit-scorer.min_support=2"
    assert yaml.safe_load((fitted / "config.yaml").read_text())["scorer"]["min_support"] == 2
    fit = json.loads((fitted / "fit.json").read_text())
    assert fit["bank_size"] == cost["bank_size"] and fit["n_unsupported"] >= 0
    assert not (run_dir / "fit.json").exists()
