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
