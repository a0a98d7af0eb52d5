"""GPU memory policy of a worker process's TensorFlow, set before any model loads.

A GPU host runs one ``flaskmodel worker`` per GPU, each pinned with ``CUDA_VISIBLE_DEVICES``.
By default TensorFlow would reserve nearly all of a GPU's memory in the first process that
touches it; here every visible GPU either grows its allocation as needed (memory growth) or is
capped at ``runtime.gpu_memory_limit_mb`` (a logical device of that size), so several pool
processes (``worker.concurrency``) can share one GPU. On a machine without GPUs it does nothing.
"""

from __future__ import annotations

import logging

logger = logging.getLogger(__name__)


def configure_gpus(memory_limit_mb: int | None) -> list[str]:
    """Apply the memory policy to every visible GPU; returns their names (empty without any)."""
    import tensorflow as tf  # noqa: PLC0415 - only in worker processes, after fork

    gpus = tf.config.list_physical_devices("GPU")
    for gpu in gpus:
        if memory_limit_mb:
            config = tf.config.LogicalDeviceConfiguration(memory_limit=memory_limit_mb)
            tf.config.set_logical_device_configuration(gpu, [config])
        else:
            tf.config.experimental.set_memory_growth(gpu, True)
    if gpus:
        policy = f"limit {memory_limit_mb} MiB" if memory_limit_mb else "memory growth"
        logger.info("GPUs %s: %s", [g.name for g in gpus], policy)
    return [g.name for g in gpus]
