"""Small helpers shared by the HTTP tests."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image


def encode(image: np.ndarray | Image.Image, fmt: str = "PNG", **save_args) -> bytes:
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **save_args)
    return buffer.getvalue()


def multipart(*files: tuple[bytes, str], **fields: str) -> dict:
    data: dict = {"image": [(io.BytesIO(content), name) for content, name in files]}
    data.update(fields)
    return data


def top1(model_result: dict) -> list[int]:
    return [result["top_k"][0]["class_id"] for result in model_result["results"]]


def class_scores(model_answer: dict, classes: int = 10) -> np.ndarray:
    """One model's answer from ``POST /image_classification`` with ``top_k`` = every class, as
    rows of every class's score in class-id order: what each compatible API must also return."""
    rows = np.zeros((len(model_answer["results"]), classes), dtype=np.float32)
    for row, result in zip(rows, model_answer["results"]):
        for entry in result["top_k"]:
            row[entry["class_id"]] = entry["score"]
    return rows


def own_api_scores(url: str, model: str, photos: list[bytes], classes: int = 10) -> np.ndarray:
    """``class_scores`` of the photos sent to a running server as one multipart request."""
    import requests

    files = [("image", (f"{i}.png", data, "image/png")) for i, data in enumerate(photos)]
    answer = requests.post(f"{url}/image_classification?model={model}&top_k={classes}", files=files, timeout=30)
    return class_scores(answer.json()["models"][model], classes)
