"""Where models run: the first GPU when one is visible (memory grown on demand,
not grabbed whole), the CPU otherwise."""

import logging

import tensorflow as tf

log = logging.getLogger("camserve.device")


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
