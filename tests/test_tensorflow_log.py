"""app.tensorflow_log: TensorFlow's machine notices dropped, its real errors kept, on every CPU.

The lines below are copied from real runs: the AVX-512 ones from an AMD EPYC with AVX-512
(the same lines an Intel Xeon with AVX-512/AMX prints), the others from every CPU machine.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from app.tensorflow_log import sort_message, split_messages

AVX512_UINT8 = ("E0000 00:00:1796288042.615751    5772 util.cc:131] oneDNN supports DT_UINT8 only on platforms "
                "with AVX-512. Falling back to the default Eigen-based implementation if present.")
NOTICES = [
    AVX512_UINT8,
    "E0000 00:00:1796288041.888036    5772 cuda_platform.cc:52] failed call to cuInit: INTERNAL: CUDA error: "
    "Failed call to cuInit: UNKNOWN ERROR (303)",
    "I0000 00:00:1796288037.843943    5772 port.cc:153] oneDNN custom operations are on. You may see slightly "
    "different numerical results due to floating-point round-off errors from different computation orders.",
    "I0000 00:00:1796288037.844481    5772 cudart_stub.cc:31] Could not find cuda drivers on your machine, "
    "GPU will not be used.",
    "I0000 00:00:1796288037.924665    5772 cpu_feature_guard.cc:227] This TensorFlow binary is optimized to use "
    "available CPU instructions in performance-critical operations.\nTo enable the following instructions: AVX2 "
    "AVX512F AVX512_VNNI AVX512_BF16 AVX_VNNI FMA, in other operations, rebuild TensorFlow with the appropriate "
    "compiler flags.",
    "I0000 00:00:1796288042.515627    5772 mlir_graph_optimization_pass.cc:437] MLIR V1 optimization pass is not "
    "enabled",
    "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",
]
REAL_ERROR = ("E0000 00:00:1796288099.000001    5772 direct_session.cc:1437] Out of memory while trying to "
              "allocate 17179869184 bytes.")


@pytest.mark.parametrize("level", [0, 2])
@pytest.mark.parametrize("notice", NOTICES, ids=lambda line: line.split("] ")[0][-40:])
def test_machine_notices_are_dropped_at_every_level(notice: str, level: int) -> None:
    assert sort_message(notice, min_level=level).text is None


def test_other_errors_are_kept_in_the_service_log_format() -> None:
    text = sort_message(REAL_ERROR, now=0.25, min_level=2).text
    assert text is not None
    assert text.endswith(" ERROR native: direct_session.cc:1437] Out of memory while trying to allocate "
                         "17179869184 bytes.")
    assert text[:23].count("-") == 2 and text[19:23] == ",250"  # "YYYY-MM-DD HH:MM:SS,mmm" as logging writes it


def test_tensorflow_min_log_level_is_applied_and_raw_lines_pass_as_they_are() -> None:
    warning = REAL_ERROR.replace("E0000", "W0000", 1)
    assert sort_message(warning, min_level=2).text is None
    assert sort_message(warning, min_level=1).text.split(" ", 3)[2:3] == ["WARNING"]
    fatal = REAL_ERROR.replace("E0000", "F0000", 1)
    assert " CRITICAL native: " in sort_message(fatal, min_level=3).text
    assert sort_message("Segmentation fault (core dumped)").text == "Segmentation fault (core dumped)"


def test_continuation_lines_stay_with_their_message() -> None:
    chunk = NOTICES[4] + "\n" + REAL_ERROR + "\nplain text\n"
    messages = split_messages(chunk)
    assert messages == [NOTICES[4], REAL_ERROR + "\nplain text"]


def test_a_process_with_the_filter_keeps_errors_drops_notices_and_loses_nothing_when_it_aborts() -> None:
    """Real file descriptors: what a C++ library writes to fd 2 goes through the child, and the
    fatal line written just before ``abort()`` still arrives (the child outlives the server)."""
    script = textwrap.dedent(f"""
        import logging, os, sys
        from app import tensorflow_log
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
        tensorflow_log.install()
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
        logging.getLogger("graphserve").info("python logging still works")
        os.write(2, {AVX512_UINT8!r}.encode() + b"\\n")
        os.write(2, {REAL_ERROR!r}.encode() + b"\\n")
        os.write(2, b"a native library's own line\\n")
        os.write(2, {REAL_ERROR.replace("E0000", "F0000", 1)!r}.encode() + b"\\nCheck failed: 1 == 2\\n")
        os.abort()
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=30)
    assert done.returncode < 0  # SIGABRT
    err = done.stderr
    assert "INFO graphserve: python logging still works" in err
    assert "oneDNN" not in err
    assert " ERROR native: direct_session.cc:1437] Out of memory" in err
    assert "a native library's own line" in err
    assert " CRITICAL native: direct_session.cc:1437] Out of memory" in err and "Check failed: 1 == 2" in err
