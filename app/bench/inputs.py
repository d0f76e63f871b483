"""What every phase runs on: the image, and a private copy of the model.

The bench never serves the graphs dir it is pointed at: ``stage_model`` copies the model's newest
version alone into a temp graphs dir (the server then loads one model, and the batching flags
edit the copy's ``model.json``); ``default_image`` is a real photo that needs no download.
``ROOT`` is where servers are started from: the checkout, or site-packages when installed.
"""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]  # the checkout, or site-packages when installed
IN_CHECKOUT = (ROOT / "scripts" / "bench.py").is_file()  # then --graphs-dir and --out default into it


def default_image() -> bytes:
    """scikit-image's bundled cat photo (no download), as a quality-90 JPEG."""
    from PIL import Image
    from skimage import data

    buffer = io.BytesIO()
    Image.fromarray(data.chelsea()).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()

def stage_model(graphs_dir: Path, model: str, batching: dict[str, float], into: Path) -> Path:
    """Copy the model's newest version alone into ``into`` (a graphs dir); apply batching knobs."""
    from ..discovery import DiscoveryError, discover
    from ..manifest import ManifestError
    from ..manifest import load as load_manifest

    try:
        specs = {spec.name: spec for spec in discover(graphs_dir)}
    except DiscoveryError as exc:
        raise SystemExit(str(exc)) from None
    if model not in specs:
        raise SystemExit(f"no model '{model}' under {graphs_dir} (found: {', '.join(sorted(specs)) or 'none'})")
    spec = specs[model]
    target = into / model / str(spec.version)
    shutil.copytree(spec.directory, target)
    if batching:
        manifest_path = target / "model.json"
        data = json.loads(manifest_path.read_text(encoding="utf-8"))
        data["batching"] = {**data.get("batching", {}), **batching}
        manifest_path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    try:
        load_manifest(target / "model.json")  # fail here, not in the server, on a bad override
    except ManifestError as exc:
        raise SystemExit(str(exc)) from None
    return into
