"""Quiet start-up: the frameworks' known start-up lines are dropped from the trainers' stderr
unless verbose; every other byte passes, at once."""

from __future__ import annotations

import os
import sys

import pytest

from launch.commands import build_train_cmd
from launch.supervise import StartupFilter, run_group

# As TensorFlow's CUDA build prints them at import (tensorflow/tensorflow#100442), and the
# CPU build's notices when TF_CPP_MIN_LOG_LEVEL is below 2
NOISE = [
    "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n",
    "E0000 00:00:1758131437.297298 3722519 cuda_dnn.cc:8579] Unable to register cuDNN factory: "
    "Attempting to register factory for plugin cuDNN when one has already been registered\n",
    "E0000 00:00:1758131437.304239 3722519 cuda_blas.cc:1407] Unable to register cuBLAS factory: "
    "Attempting to register factory for plugin cuBLAS when one has already been registered\n",
    "2025-09-17 14:44:05.176998: E external/local_xla/xla/stream_executor/cuda/cuda_fft.cc:467] "
    "Unable to register cuFFT factory: Attempting to register factory for plugin cuFFT when one "
    "has already been registered\n",
    "W0000 00:00:1758131437.322781 3722519 computation_placer.cc:177] computation placer already "
    "registered. Please check linkage and avoid linking the same target more than once.\n",
    "2025-10-30 02:25:47.476347: I tensorflow/core/util/port.cc:113] oneDNN custom operations are "
    "on. You may see slightly different numerical results due to floating-point round-off errors "
    "from different computation orders. To turn them off, set the environment variable "
    "`TF_ENABLE_ONEDNN_OPTS=0`.\n",
    "I0000 00:00:1795722741.804992    3293 cpu_feature_guard.cc:227] This TensorFlow binary is "
    "optimized to use available CPU instructions in performance-critical operations.\n",
    "To enable the following instructions: AVX2 FMA, in other operations, rebuild TensorFlow "
    "with the appropriate compiler flags.\n",
    "2023-12-05 09:29:20.002737: W tensorflow/compiler/tf2tensorrt/utils/py_utils.cc:38] TF-TRT "
    "Warning: Could not find TensorRT\n",
]
# What must still reach the user: other messages, from the same files too, warnings, errors
KEPT = [
    "E0000 00:00:1758131437.297298 3722519 cuda_dnn.cc:9000] Could not create cudnn handle: "
    "CUDNN_STATUS_INTERNAL_ERROR\n",
    "W0000 00:00:1758131437.322781 3722519 computation_placer.cc:200] something else\n",
    "WARNING:tensorflow:5 out of the last 5 calls to <function f> triggered tf.function "
    "retracing.\n",
    "/work/x.py:3: UserWarning: 2 files are not RGB JPEG\n",
    "Traceback (most recent call last):\n",
    "[tf] error: out of memory\n",
]


def interleaved() -> tuple[bytes, bytes]:
    """(a stream with noise and kept lines mixed, what must come out of it)."""
    stream, kept = [], []
    for i, line in enumerate(KEPT):
        stream += [NOISE[i % len(NOISE)], line]
        kept.append(line)
    stream += NOISE
    return "".join(stream).encode(), "".join(kept).encode()


@pytest.mark.parametrize("chunk", [1, 7, 100, 1 << 20])
def test_filter_drops_the_startup_lines_and_keeps_the_rest_however_the_bytes_arrive(chunk):
    stream, expected = interleaved()
    filt = StartupFilter()
    out = b"".join(filt.feed(stream[i : i + chunk]) for i in range(0, len(stream), chunk))
    assert out + filt.flush() == expected


def test_filter_passes_progress_lines_at_once_and_holds_a_possible_noise_line_only_briefly():
    filt = StartupFilter()
    # tqdm: '\r' and the bar, no end of line, then the next update
    assert filt.feed(b"\r 20%|##        | 1/5") == b"\r 20%|##        | 1/5"
    assert filt.feed(b"\r 40%|####") == b"\r 40%|####"
    assert filt.feed(b"\n") == b"\n"
    # the start of a C++ log line waits for its end, or for flush() (the pump's 0.2 s)
    assert filt.feed(b"E0000 00:00:1.5 12 cuda_dnn.cc:8579] Unable") == b""
    assert filt.flush() == b"E0000 00:00:1.5 12 cuda_dnn.cc:8579] Unable"
    assert filt.feed(b" to register cuDNN factory\n") == b" to register cuDNN factory\n"
    assert filt.feed(NOISE[0].encode()) == b""


CHILD = (
    "import sys\n"
    "print('out line', flush=True)\n"
    f"sys.stderr.write({interleaved()[0].decode()!r})\n"
    "sys.stderr.write('\\r 50%|#####     | 1/2')\n"
)


@pytest.mark.parametrize("verbose", [False, True])
def test_run_group_hides_the_startup_lines_unless_verbose(capfd, verbose):
    result = run_group([([sys.executable, "-c", CHILD], dict(os.environ))], ["c"], verbose=verbose)
    assert result.returncode == 0
    out, err = capfd.readouterr()
    assert out == "out line\n"  # stdout is not touched
    stream, kept = interleaved()
    expected = (stream if verbose else kept).decode() + "\r 50%|#####     | 1/2"
    assert err == expected


def test_a_failing_process_traceback_comes_through_before_run_group_returns(capfd):
    code = "import sys; sys.stderr.write('I0000 00:00:1.5 12 x.cc:1] half'); sys.exit(3)"
    result = run_group([([sys.executable, "-c", code], dict(os.environ))], ["c"])
    assert result.returncode == 3
    assert capfd.readouterr().err == "I0000 00:00:1.5 12 x.cc:1] half"  # held, then flushed


def test_verbose_leaves_tensorflow_logging_at_its_own_level(tmp_path):
    _, quiet = build_train_cmd("tf", tmp_path, base_env={})
    _, verbose = build_train_cmd("tf", tmp_path, base_env={}, verbose=True)
    assert quiet["TF_CPP_MIN_LOG_LEVEL"] == "2"
    assert "TF_CPP_MIN_LOG_LEVEL" not in verbose
    # a level the user set is kept either way; nothing that changes how TensorFlow runs is set
    for flag in (False, True):
        _, env = build_train_cmd(
            "tf", tmp_path, base_env={"TF_CPP_MIN_LOG_LEVEL": "0"}, verbose=flag
        )
        assert env["TF_CPP_MIN_LOG_LEVEL"] == "0"
        assert not any(key.startswith("TF_ENABLE") for key in env)


@pytest.mark.slow
def test_tensorflow_startup_lines_are_hidden_from_a_real_import(capfd):
    """TensorFlow at its most talkative (level 0): the start-up lines it really prints here
    match STARTUP_NOISE, and the launcher's quiet default drops them."""
    code = "import tensorflow as tf; print(float(tf.reduce_sum(tf.ones(3))), flush=True)"
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "0"}
    assert run_group([([sys.executable, "-c", code], env)], ["tf"], verbose=True).returncode == 0
    loud = capfd.readouterr()
    if "InitializeLog" not in loud.err:
        pytest.skip(f"this TensorFlow printed no absl start-up notice at level 0: {loud.err!r}")
    filt = StartupFilter()
    filtered = (filt.feed(loud.err.encode()) + filt.flush()).decode()
    for text in ("InitializeLog", "cpu_feature_guard", "To enable the following instructions"):
        assert text not in filtered, filtered
    assert run_group([([sys.executable, "-c", code], env)], ["tf"]).returncode == 0
    quiet = capfd.readouterr()
    assert quiet.out == loud.out == "3.0\n"
    assert "InitializeLog" not in quiet.err
