"""Where models run: the first GPU when one is visible (memory grown on demand,
not grabbed whole), the CPU otherwise."""

import logging

import tensorflow as tf

log = logging.getLogger("camserve.device")


def configure_threads(intra_op: int, inter_op: int) -> str:
    """TensorFlow's thread pools; must run before TensorFlow runs its first op."""
    try:
        tf.config.threading.set_intra_op_parallelism_threads(intra_op)
        tf.config.threading.set_inter_op_parallelism_threads(inter_op)
    except RuntimeError as err:  # already initialised (a test process): keep what it has
        log.warning("TensorFlow thread pools already set: %s", err)
    return f"intra-op {tf.config.threading.get_intra_op_parallelism_threads()}, inter-op {tf.config.threading.get_inter_op_parallelism_threads()}"


def select_device() -> str:
    """Call before TensorFlow first touches a device: memory growth is fixed then."""
    gpus = tf.config.list_physical_devices("GPU")
    for gpu in gpus:
        try:
            tf.config.experimental.set_memory_growth(gpu, True)
        except RuntimeError as err:  # devices already initialised: keep their setting
            log.warning("could not enable memory growth on %s: %s", gpu.name, err)
    device = "/device:GPU:0" if gpus else "/device:CPU:0"
    log.info("models run on %s", device, extra={"gpus": len(gpus)})
    return device
