"""The live-inspection part of `make demo`: a synthetic line-scan strip and a short video of parts, inspected.

    from inference.demo_live import run_demo_live
    info = run_demo_live("runs/demo/bundle", Path("runs/demo/live"))   # or "registry:PRODUCT" (with home=)
    # in `loupe demo` (flows/demo.py DemoContext ctx):
    #   run_demo_live(f"registry:{ctx.product}", ctx.out / "live", db_url=ctx.db_url, home=ctx.home)
    info["db_url"], info["image_root"], info["records"], info["flagged"][0]["overlay"]

What it does (all deterministic under `seed`):
1. writes `OUT/strip.png` (unless `strip_png` is given), a line-scan strip (`pipeline.data.synthetic.make_strip`, the
   bundle's input size high, `strip_width` long, `strip_defects` defects) and inspects
   it as `linescan:OUT/strip.png` (square tiles, a quarter overlap; a defect across a
   tile border is one record);
2. writes `OUT/parts.avi` (FFV1, lossless): `parts` synthetic surfaces
   (`make_surface`), every third one with a defect (`add_defect`, kinds cycling), and
   inspects it `every-frame`;
3. both runs go to the results store `db_url` (default: a SQLite file
   `OUT/results/results.db`, images in `OUT/results/images/`).

Returns {"db_url", "image_root", "strip_png", "video_path", "strip": summary, "video": summary, "records": n,
"flagged": [{"run", "source", "frame_index", "strip", "score", "image", "map", "overlay"}, ...]}
where the image paths are absolute.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Optional

import cv2
import numpy as np

log = logging.getLogger("loupe.demo")


def run_demo_live(bundle_or_registry: str, out_dir: Path, station: str = "demo", db_url: Optional[str] = None, *,
                  texture: str = "brushed_metal", strip_width: int = 4096, strip_defects: int = 4, parts: int = 24,
                  seed: int = 0, runtime: Optional[str] = None, home: Optional[Path] = None,
                  image_root: Optional[Path] = None, strip_png: Optional[Path] = None) -> dict[str, Any]:
    """Inspect a synthetic strip and a video of synthetic parts into the results store; where the records are.

    home: the Loupe home whose registry `registry:PRODUCT` refers to (default $LOUPE_HOME).
    image_root: the store's image folder (default: next to a SQLite database).
    strip_png: inspect this strip image instead of generating one (e.g. the demo data's strip.png).
    """
    from inference.live import LiveConfig, LiveInspector
    from inference.live_model import ModelSlot
    from inference.sources import TileConfig, open_source
    from inference.store import ResultsStore
    from pipeline.data.io import write_image_atomic
    from pipeline.data.synthetic import DEFECTS, add_defect, make_strip, make_surface

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    slot = ModelSlot(bundle_or_registry, runtime=runtime, home=home)
    size = slot.inspector.spec.size
    rng = np.random.default_rng(seed)

    if strip_png is None:
        strip_png = out_dir / "strip.png"
        strip, _ = make_strip(rng, texture, height=size, width=max(strip_width, 2 * size), n_defects=strip_defects)
        write_image_atomic(strip_png, strip)

    video = out_dir / "parts.avi"
    tmp = out_dir / ".parts.avi.tmp.avi"
    vw = cv2.VideoWriter(str(tmp), cv2.VideoWriter_fourcc(*"FFV1"), 10, (size, size))
    if not vw.isOpened():
        raise RuntimeError("OpenCV cannot write an FFV1 video here")
    for i in range(parts):
        img = make_surface(rng, texture, (size, size))
        if i % 3 == 2:
            img, _ = add_defect(rng, img, DEFECTS[(i // 3) % len(DEFECTS)])
        vw.write(cv2.cvtColor(img, cv2.COLOR_GRAY2BGR))
    vw.release()
    tmp.replace(video)  # atomic: a crash never leaves a half-written parts.avi

    url = db_url or f"sqlite:///{(out_dir / 'results' / 'results.db').resolve()}"
    store = ResultsStore(url, image_root=image_root)
    try:
        cfg = LiveConfig(station=station, runtime=runtime)
        strip_summary = LiveInspector(open_source(f"linescan:{strip_png}", tiles=TileConfig()), slot, store, cfg).run()
        slot2 = ModelSlot(bundle_or_registry, runtime=runtime, home=home)
        video_summary = LiveInspector(open_source(str(video)), slot2, store, cfg).run()
        flagged = []
        for run in (strip_summary, video_summary):
            for r in store.records(run["run_id"]):
                flagged.append({"run": r.run_id, "source": r.source, "frame_index": r.frame_index,
                                "strip": None if r.strip_x0 is None else [r.strip_y0, r.strip_y1, r.strip_x0, r.strip_x1],
                                "score": round(r.score, 4), "image": str(store.image_path(r.image_path)),
                                "map": str(store.image_path(r.map_path)), "overlay": str(store.image_path(r.overlay_path))})
        return {"db_url": url, "image_root": str(store.image_root), "strip_png": str(strip_png), "video_path": str(video),
                "strip": strip_summary, "video": video_summary, "records": len(flagged), "flagged": flagged}
    finally:
        store.close()
