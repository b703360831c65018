"""Eigen-CAM (Muhammad and Yeasin 2020) and EigenGrad-CAM: the [h*w, K] matrix
(activations, or g * A), centred over positions, projected on its first
principal direction. Eigen-CAM uses no gradient and so does not depend on the
class.

The principal direction is the top eigenvector of the smaller Gram matrix
(X X^T when h*w <= K, else X^T X), found by squaring the matrix until it is
rank one, at most SQUARINGS times (a power iteration of up to 2^16 steps in 16
matmuls), rather than by tf.linalg.eigh: XLA's CPU eigh took 133 ms for 32 64x64
matrices where 16 squarings take about 3 ms, and it agrees with a float64 SVD to
2e-6 even at an eigenvalue ratio of 0.998.
The projection's sign, arbitrary in an eigenvector, is chosen so the map correlates
positively with the activations' channel sum; where that sum is flat (a LayerNorm's
output), so that the largest value of the projection is positive. As every camserve map, the result
is ReLU'd and scaled by its maximum (pytorch-grad-cam min-max scales it instead)."""

import tensorflow as tf

from .base import CamMethod

SQUARINGS = 16
# 1 - |G / tr G|_F^2 below this: the second eigenvalue is under 1e-6 of the first.
RANK_ONE = 2e-6
# A channel sum whose spread over positions is below this share of the activations' norm is flat.
FLAT_TOTAL = 1e-4


def _over_trace(gram):
    """G over its trace: a PSD matrix's entries are at most its largest diagonal one, so
    nothing overflows, and its top eigenvalue is at least 1/m of the trace, so nothing
    underflows (the trace reads m entries where the largest magnitude read m^2)."""
    return tf.math.divide_no_nan(gram, tf.linalg.trace(gram)[:, None, None])


def top_eigenvector(gram):
    """Unit top eigenvector of each symmetric PSD [N,m,m] matrix: G^(2^k) is nearly
    rank one, u u^T scaled, so its largest column is parallel to u (and, being the
    largest, never zero unless G is). The squaring stops once every nonzero matrix of
    the batch is rank one to float32's precision, then squares once more; at most
    SQUARINGS times (a ratio of 0.998 between the top two eigenvalues takes 14). G
    over its trace has a squared Frobenius norm of sum(l_i^2) / sum(l_i)^2: 1 exactly
    when G is rank one, about 1 - 2 sum_{i>1} l_i / l_1 near it. The demo model's
    activations settle in 4-6 squarings; the fixed 16 were about half of what
    Eigen-CAM added to Grad-CAM there."""

    def unsettled(unit):
        rank_one = 1.0 - tf.reduce_sum(tf.square(unit), axis=(-2, -1)) <= RANK_ONE
        # A zero (or NaN) matrix never settles: it does not hold the others back.
        return tf.reduce_any(~rank_one & (tf.linalg.trace(unit) > 0))

    def squared(unit):
        return (_over_trace(tf.matmul(unit, unit)),)

    (unit,) = tf.while_loop(unsettled, squared, (_over_trace(gram),), maximum_iterations=SQUARINGS - 1)
    gram = tf.matmul(unit, unit)
    column = tf.gather(gram, tf.argmax(tf.norm(gram, axis=-2), axis=-1), axis=-1, batch_dims=1)
    return tf.math.divide_no_nan(column, tf.norm(column, axis=-1, keepdims=True))


def _unit(x):
    """x [N,...] over each image's largest magnitude: the direction and the signs do not
    depend on scale, and the squares of activations as small as 1e-19 (a deep network's
    with random weights) would be flushed to zero in float32 (TensorFlow flushes subnormals)."""
    peak = tf.reduce_max(tf.abs(x), axis=tf.range(1, tf.rank(x)), keepdims=True)
    return tf.math.divide_no_nan(x, peak)


def _principal_direction(x):
    """Unit first right singular vector [N,K] of the centred [N,h*w,K] x."""
    x = _unit(x)
    if x.shape[1] <= x.shape[2]:
        direction = tf.linalg.matvec(x, top_eigenvector(tf.matmul(x, x, transpose_b=True)), transpose_a=True)  # X^T u: the right singular vector, unnormalised
        return tf.math.divide_no_nan(direction, tf.norm(direction, axis=-1, keepdims=True))
    return top_eigenvector(tf.matmul(x, x, transpose_a=True))


def principal_projection(values, activations):
    """values, activations [N,h,w,K] -> the map [N,h,w] before the ReLU."""
    n, h, w, k = values.shape[0], values.shape[1], values.shape[2], values.shape[3]
    batch = tf.shape(values)[0] if n is None else n
    x = tf.reshape(values, [batch, h * w, k])
    x = x - tf.reduce_mean(x, axis=1, keepdims=True)
    projection = tf.linalg.matvec(x, _principal_direction(x))
    activations = _unit(activations)  # only its signs and the ratio of two norms are read
    total = tf.reshape(tf.reduce_sum(activations, axis=-1), [batch, h * w])
    agreement = tf.reduce_sum(
        (projection - tf.reduce_mean(projection, axis=-1, keepdims=True)) * (total - tf.reduce_mean(total, axis=-1, keepdims=True)),
        axis=-1,
        keepdims=True,
    )
    # After a LayerNorm with no bias the channel sum is zero but for rounding, which would
    # decide the sign: there the strongest response is made positive instead.
    spread = tf.norm(total - tf.reduce_mean(total, axis=-1, keepdims=True), axis=-1, keepdims=True)
    flat = spread <= FLAT_TOTAL * tf.norm(tf.reshape(activations, [batch, -1]), axis=-1, keepdims=True)
    strongest = tf.gather(projection, tf.argmax(tf.abs(projection), axis=-1), axis=-1, batch_dims=1)[:, None]
    projection = tf.where(tf.where(flat, strongest, agreement) < 0, -projection, projection)
    return tf.reshape(projection, [batch, h, w])


def projection_scale(values):
    """[N,h,w]: the magnitude of the terms the projection sums, sum_k (|x_k| + |mean_k|) |d_k|
    (centring subtracts a mean of both signs too). For verification, which runs eagerly."""
    x = tf.reshape(values, [values.shape[0], -1, values.shape[-1]])
    mean = tf.reduce_mean(x, axis=1, keepdims=True)
    magnitude = tf.linalg.matvec(tf.abs(x) + tf.abs(mean), tf.abs(_principal_direction(x - mean)))
    return tf.reshape(magnitude, values.shape[:3])


class EigenCam(CamMethod):
    name = "eigencam"

    def values(self, activations, gradients):
        """The [N,h,w,K] matrix whose principal direction the map projects on."""
        return activations

    def map(self, activations, gradients):
        return tf.nn.relu(principal_projection(self.values(activations, gradients), activations))

    def scale(self, activations, gradients):
        return projection_scale(self.values(activations, gradients))


class EigenGradCam(EigenCam):
    name = "eigengradcam"

    def values(self, activations, gradients):
        return gradients * activations
