"""Tiny hand-written functional vision transformers (keras.layers.MultiHeadAttention):
a Conv2D patch embedding with stride = patch size, leading non-patch tokens and a
position embedding from one small registered layer, pre-norm blocks with residual
Adds, a final LayerNorm, class-token or mean pooling and a Dense softmax head.
Importable with --custom-objects (it registers TokenEmbedding)."""

import keras
from keras import layers, ops

SIZE, PATCH, DIM, CLASSES = 32, 8, 16, 5


@keras.saving.register_keras_serializable(package="camserve_tests")
class TokenEmbedding(layers.Layer):
    """Prepends `prefix` learned tokens (class, distillation, register) to the patch
    tokens and adds a learned position embedding."""

    def __init__(self, prefix=1, **kwargs):
        super().__init__(**kwargs)
        self.prefix = prefix

    def build(self, shape):
        tokens, dim = shape[1], shape[2]
        init = keras.initializers.RandomNormal(stddev=0.5)
        self.tokens = self.add_weight(shape=(1, self.prefix, dim), initializer=init, name="tokens") if self.prefix else None
        self.position = self.add_weight(shape=(1, self.prefix + tokens, dim), initializer=init, name="position")

    def call(self, x):
        if self.prefix:
            lead = ops.broadcast_to(ops.cast(self.tokens, x.dtype), (ops.shape(x)[0], self.prefix, ops.shape(x)[2]))
            x = ops.concatenate([lead, x], axis=1)
        return x + ops.cast(self.position, x.dtype)

    def compute_output_shape(self, shape):
        return (shape[0], None if shape[1] is None else shape[1] + self.prefix, shape[2])

    def get_config(self):
        return {**super().get_config(), "prefix": self.prefix}


def _norm(name, dtype):
    """Trained-like scales and offsets: with gamma 1 and beta 0 the output's channel sum is exactly
    zero, which leaves Eigen-CAM's sign (correlation with that sum) to rounding."""
    return layers.LayerNormalization(
        epsilon=1e-6,
        gamma_initializer=keras.initializers.RandomUniform(0.5, 1.5),
        beta_initializer=keras.initializers.RandomNormal(stddev=0.2),
        name=name,
        dtype=dtype,
    )


def vit(pooling="class", prefix=1, depth=2, dtype="float32", size=SIZE):
    """pooling "class": the head reads token 0 (of `prefix` leading tokens); "mean": no
    prefix tokens, the head reads the mean of all tokens."""
    prefix = prefix if pooling == "class" else 0
    grid = size // PATCH
    inputs = keras.Input((size, size, 3), dtype=dtype)
    x = layers.Conv2D(DIM, PATCH, strides=PATCH, name="patch_embed", dtype=dtype)(inputs)
    x = layers.Reshape((grid * grid, DIM), name="patches", dtype=dtype)(x)
    x = TokenEmbedding(prefix, name="embed", dtype=dtype)(x)
    for i in range(depth):
        h = _norm(f"block{i}_norm1", dtype)(x)
        h = layers.MultiHeadAttention(2, DIM // 2, name=f"block{i}_attn", dtype=dtype)(h, h)
        x = layers.Add(name=f"block{i}_add", dtype=dtype)([x, h])
        h = _norm(f"block{i}_norm2", dtype)(x)
        h = layers.Dense(2 * DIM, activation="gelu", name=f"block{i}_mlp1", dtype=dtype)(h)
        h = layers.Dense(DIM, name=f"block{i}_mlp2", dtype=dtype)(h)
        x = layers.Add(name=f"block{i}_out", dtype=dtype)([x, h])
    x = _norm("final_norm", dtype)(x)
    pooled = x[:, 0] if pooling == "class" else layers.GlobalAveragePooling1D(name="gap", dtype=dtype)(x)
    out = layers.Dense(CLASSES, activation="softmax", name="head", dtype=dtype)(pooled)
    return keras.Model(inputs, out, name=f"vit_{pooling}")
