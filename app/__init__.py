"""graphserve: serve TensorFlow image classifiers from frozen graphs (work in progress)."""
