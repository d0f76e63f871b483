"""The benchmark's peer servers: what people write instead of graphserve, on the same Keras weights.

Two servers the bench's peers phase (``app/bench/peers.py``) starts, each in its own process:

- ``litserve_peer``: the tuned peer, LitServe with worker processes and dynamic batching;
- ``flask_keras_peer``: the naive baseline, Flask under waitress, ``model.predict`` per request;

and ``common``, what both share (the Keras model, Pillow preprocessing as the manifest says,
top-5). They live in the package, not in ``scripts/``, so an installed ``graphserve bench --peers``
finds them; they run as modules, from the checkout or from site-packages::

    .venv/bin/python -m app.bench.peer_servers.flask_keras_peer --port 8102 --model-h5 model.h5

LitServe is not a graphserve requirement: ``pip install -r scripts/peers/requirements.txt`` in a
checkout (``requirements-dev.txt`` includes it). Nothing here is imported by the service.
"""
