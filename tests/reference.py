"""Independent float64 Grad-CAM reference: one image at a time, the gradient of
the chosen logit with respect to the target activations by an explicit tape,
and each method's weights from its formula in numpy."""

import numpy as np
import tensorflow as tf

METHODS = ("gradcam", "gradcam++", "guided", "hirescam", "gradcam-elementwise", "xgradcam", "layercam", "eigencam", "eigengradcam")
EPSILON = 1e-7


def method_weights(name: str, a: np.ndarray, g: np.ndarray) -> np.ndarray:
    """Channel weights [K] from activations and gradients [h,w,K]."""
    if name == "gradcam":
        return g.mean(axis=(0, 1))
    if name == "gradcam++":
        alpha = g**2 / (2 * g**2 + a.sum(axis=(0, 1)) * g**3 + EPSILON)
        alpha = np.where(g != 0, alpha, 0.0)
        return (alpha * np.maximum(g, 0)).sum(axis=(0, 1))
    if name == "guided":
        return np.where((a > 0) & (g > 0), g, 0.0).mean(axis=(0, 1))
    if name == "xgradcam":
        return (g * a).sum(axis=(0, 1)) / (a.sum(axis=(0, 1)) + EPSILON)
    raise ValueError(name)


def principal_projection(values: np.ndarray, a: np.ndarray) -> np.ndarray:
    """[h,w,K] centred over positions, projected on its first right singular
    vector (numpy's SVD); the sign that correlates with the channel sum of a, or,
    where that sum is flat, makes the largest value positive."""
    h, w, k = values.shape
    x = values.reshape(h * w, k)
    x = x - x.mean(axis=0)
    _, _, vt = np.linalg.svd(x, full_matrices=False)
    projection = x @ vt[0]
    total = a.sum(axis=-1).reshape(-1)
    if np.linalg.norm(total - total.mean()) <= 1e-4 * np.linalg.norm(a):  # flat: the strongest value positive
        agreement = projection[np.argmax(np.abs(projection))]
    else:
        agreement = np.dot(projection - projection.mean(), total - total.mean())
    if agreement < 0:
        projection = -projection
    return projection.reshape(h, w)


def method_map(name: str, a: np.ndarray, g: np.ndarray) -> np.ndarray:
    """The map [h,w] before scaling, from activations and gradients [h,w,K]."""
    if name == "hirescam":
        cam = (g * a).sum(axis=-1)
    elif name == "gradcam-elementwise":
        cam = np.maximum(g * a, 0).sum(axis=-1)
    elif name == "layercam":
        cam = (np.maximum(g, 0) * a).sum(axis=-1)
    elif name == "eigencam":
        cam = principal_projection(a, a)
    elif name == "eigengradcam":
        cam = principal_projection(g * a, a)
    else:
        cam = a @ method_weights(name, a, g)
    return np.maximum(cam, 0.0)


LUMINANCE = np.array([0.2989, 0.5870, 0.1140])  # ITU-R 601, as tf.image.rgb_to_grayscale


def resize_bilinear(values: np.ndarray, height: int, width: int) -> np.ndarray:
    """[h,w] -> [height,width], bilinear between pixel centres, edges clamped (what
    tf.image.resize does without antialiasing), written out in float64."""
    h, w = values.shape
    ys = np.clip((np.arange(height) + 0.5) * h / height - 0.5, 0, h - 1)
    xs = np.clip((np.arange(width) + 0.5) * w / width - 0.5, 0, w - 1)
    y0, x0 = np.floor(ys).astype(int), np.floor(xs).astype(int)
    y1, x1 = np.minimum(y0 + 1, h - 1), np.minimum(x0 + 1, w - 1)
    wy, wx = (ys - y0)[:, None], (xs - x0)[None, :]
    top = values[y0][:, x0] * (1 - wx) + values[y0][:, x1] * wx
    bottom = values[y1][:, x0] * (1 - wx) + values[y1][:, x1] * wx
    return top * (1 - wy) + bottom * wy


def explain_layers(test_model, images, class_index, method, layers: list, choice, counterfactual=None):
    """An export with several target layers, per image of a batch (as explain_batch):
    `layers` as exported (None: the model's target), `choice[i]` one of them or
    "mean"/"max" of every layer's map scaled to 1; maps at the finest layer's size."""
    each = [explain_batch(test_model, images, class_index, method, counterfactual=counterfactual, layer=layer) for layer in layers]
    results = []
    for i, first in enumerate(each[0]):
        raws = [by_layer[i]["raw"] for by_layer in each]
        size = max((raw.shape for raw in raws), key=lambda hw: hw[0] * hw[1])
        maps = [resize_bilinear(raw, *size) for raw in raws]
        if choice[i] in ("mean", "max"):
            scaled = [m / m.max() if m.max() > 0 else m for m in maps]
            cam = np.mean(scaled, axis=0) if choice[i] == "mean" else np.max(scaled, axis=0)
        else:
            cam = maps[layers.index(choice[i])]
        peak = cam.max()
        results.append({**first, "heatmap": cam / peak if peak > 0 else np.zeros_like(cam), "heatmap_scale": peak})
    return results


def explain_one(test_model, pixels: np.ndarray, class_index: int, method: str, scale=1 / 255.0, counterfactual=False, layer=None):
    """Outputs for one uint8 image [H,W,3] (explain_batch's, for one)."""
    return explain_batch(test_model, pixels[None], [class_index], [method], scale, [counterfactual], layer)[0]


def explain_batch(test_model, images: np.ndarray, class_index, method, scale=1 / 255.0, counterfactual=None, layer=None):
    """Outputs for uint8 images [N,H,W,3], each with its class and method name, model
    inputs = pixels * scale (luminance for a 1-channel model). class_index -r is the
    r-th highest logit; a counterfactual map is the method on the negated gradients;
    `layer` one of test_model.layers (None: its target). One forward pass for the batch:
    the test models mix no images, so d(sum of each image's score) is each one's gradient."""
    x = images.astype(np.float64)
    if test_model.channels == 1:
        x = (x @ LUMINANCE)[..., None]
    x = tf.constant(x * scale)
    features, to_logits = test_model.layers[layer] if layer else (test_model.features, test_model.logits)
    activations = features(x)
    with tf.GradientTape() as tape:
        tape.watch(activations)
        logits = to_logits(activations)
        chosen = [int(np.argsort(-z, kind="stable")[-c - 1]) if c < 0 else c for z, c in zip(logits.numpy(), class_index)]
        score = tf.reduce_sum(tf.gather(logits, chosen, axis=1, batch_dims=1))
    gradients = tape.gradient(score, activations).numpy()
    results = []
    for i, z in enumerate(logits.numpy()):
        g = gradients[i] * (-1.0 if counterfactual is not None and counterfactual[i] else 1.0)
        cam = method_map(method[i], activations.numpy()[i], g)
        peak = cam.max()
        if test_model.head in ("sigmoid", "binary"):
            probabilities = 1.0 / (1.0 + np.exp(-z))
        else:
            probabilities = np.exp(z - z.max()) / np.exp(z - z.max()).sum()
        results.append({
            "logits": z,
            "probabilities": probabilities,
            "class_index": chosen[i],
            "heatmap": cam / peak if peak > 0 else np.zeros_like(cam),
            "heatmap_scale": peak,
            "raw": cam,
        })
    return results


def smooth_images(count: int, size, seed: int) -> np.ndarray:
    """Random images with structure at several scales, uint8 [count,H,W,3];
    size is H = W or (H, W)."""
    height, width = (size, size) if isinstance(size, int) else size
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(0, 255, (count, 4, 4, 3))
    images = tf.image.resize(coarse, (height, width)).numpy() + rng.normal(0, 25, (count, height, width, 3))
    return np.clip(images, 0, 255).astype(np.uint8)


def check_export(exported, target, seed=5):
    """An export's answers for every method and several classes in one batch against the
    float64 reference `exported.reference(batch, target)` gives: (logits, the target's
    activations, d(logit_c)/d(activations) for every class); `exported.grid` makes the
    activations a map (tokens on their patch grid; the identity for a map)."""
    count = len(METHODS) + 3
    batch = smooth_images(count, exported.size, seed=seed)
    class_index = np.resize([-1, 0, exported.classes - 1, -2, 2], count)
    method = np.arange(count) % len(METHODS)
    got = exported.run(batch, class_index, method)
    logits, tokens, gradients = exported.reference(batch, target)
    assert got["heatmap"].shape == (count, *exported.grid_shape)
    np.testing.assert_allclose(got["logits"], logits, rtol=1e-4, atol=1e-5)
    # The probabilities are the Keras model's own (float32, as users run it).
    np.testing.assert_allclose(got["probabilities"], exported.probabilities(batch), rtol=1e-4, atol=1e-6)
    nonempty = 0
    for i in range(count):
        ranked = np.argsort(-logits[i], kind="stable")
        chosen = ranked[-class_index[i] - 1] if class_index[i] < 0 else class_index[i]
        assert got["class_index"][i] == chosen
        a, g = exported.grid(tokens[i]), exported.grid(gradients[i, chosen])
        name = METHODS[method[i]]
        cam = method_map(name, a, g)
        peak = cam.max()
        nonempty += peak > 0
        # float32 rounding is relative to the terms a map sums, which LayerNorm outputs of both
        # signs can cancel to far less than the terms (as verify.py judges the export).
        terms = np.abs(a if name == "eigencam" else a * g).sum(axis=-1).max()
        if name == "xgradcam":  # a quotient of sums: rounding grows as the sum of A cancels
            w = method_weights(name, a, g)
            numerator = np.abs(g * a).sum(axis=(0, 1)) + np.abs(w) * np.abs(a).sum(axis=(0, 1))
            terms = (np.abs(a) * numerator / np.abs(a.sum(axis=(0, 1)) + EPSILON)).sum(axis=-1).max()
        raw = got["heatmap"][i] * got["heatmap_scale"][i]
        assert np.abs(raw - cam).max() <= 1e-4 * max(peak, terms), (i, name)
    assert nonempty >= count - 2, "empty maps prove little: change the test images"


def capture(model, path, x, classes: int):
    """The Keras model itself run eagerly on x, the output of the layer at `path` (layer
    names into nested models) recorded as it runs: (outputs, that output, d(output_c)/d(it)
    [N, C, ...] for every class c). Independent of the exporter's split of the graph."""
    layer = model
    for name in path:
        layer = layer.get_layer(name)
    original, seen = layer.call, []
    with tf.GradientTape(persistent=True) as tape:

        def call(*args, **kwargs):
            out = original(*args, **kwargs)
            tape.watch(out)
            seen.append(out)
            return out

        layer.call = call
        try:
            out = model(x, training=False)
        finally:
            del layer.call
        per_class = [tf.reduce_sum(out[:, c]) for c in range(classes)]
    gradients = np.stack([tape.gradient(s, seen[-1]).numpy() for s in per_class], axis=1)
    return out.numpy(), seen[-1].numpy(), gradients


def _layer_norm(x, gamma, beta, epsilon=1e-6):
    mean = tf.reduce_mean(x, axis=-1, keepdims=True)
    variance = tf.reduce_mean((x - mean) ** 2, axis=-1, keepdims=True)
    return (x - mean) / tf.sqrt(variance + epsilon) * gamma + beta


def vit_attention(model, images, depth: int, patch: int):
    """tests/vit.py's class-token ViT computed by hand in float64 from its weights (not by
    its layers): (logits [N, C], every block's attention probabilities [N, L, heads, T, T],
    d(logit_c)/d(those) for every class [N, C, L, heads, T, T])."""

    def weights(name):
        return [tf.constant(np.asarray(w, np.float64)) for w in model.get_layer(name).get_weights()]

    x = tf.constant(images.astype(np.float64) / 255.0)
    kernel, bias = weights("patch_embed")
    patches = tf.nn.conv2d(x, kernel, strides=patch, padding="VALID") + bias
    n, gh, gw, dim = patches.shape
    tokens_in, position = weights("embed")
    t = tf.concat([tf.repeat(tokens_in, n, axis=0), tf.reshape(patches, [n, gh * gw, dim])], axis=1) + position
    probabilities = []
    with tf.GradientTape(persistent=True) as tape:
        for i in range(depth):
            h = _layer_norm(t, *weights(f"block{i}_norm1"))
            qk, qb, kk, kb, vk, vb, ok, ob = weights(f"block{i}_attn")
            q = tf.einsum("ntd,dhk->nthk", h, qk) + qb
            k = tf.einsum("ntd,dhk->nthk", h, kk) + kb
            v = tf.einsum("ntd,dhk->nthk", h, vk) + vb
            logits_qk = tf.einsum("nthk,nshk->nhts", q, k) / np.sqrt(qk.shape[-1])
            a = tf.exp(logits_qk - tf.reduce_max(logits_qk, axis=-1, keepdims=True))
            a = a / tf.reduce_sum(a, axis=-1, keepdims=True)
            tape.watch(a)
            probabilities.append(a)
            t = t + tf.einsum("nthk,hkd->ntd", tf.einsum("nhts,nshk->nthk", a, v), ok) + ob
            h = _layer_norm(t, *weights(f"block{i}_norm2"))
            w1, b1 = weights(f"block{i}_mlp1")
            h = h @ w1 + b1
            h = 0.5 * h * (1.0 + tf.math.erf(h / np.sqrt(2.0)))  # exact GELU, as keras's "gelu"
            w2, b2 = weights(f"block{i}_mlp2")
            t = t + h @ w2 + b2
        t = _layer_norm(t, *weights("final_norm"))
        head_kernel, head_bias = weights("head")
        logits = t[:, 0] @ head_kernel + head_bias
        per_class = [tf.reduce_sum(logits[:, c]) for c in range(logits.shape[-1])]
    gradients = np.stack([np.stack([g.numpy() for g in tape.gradient(s, probabilities)], axis=1) for s in per_class], axis=1)
    return logits.numpy(), np.stack([p.numpy() for p in probabilities], axis=1), gradients


def attention_rollout(probabilities: np.ndarray, prefix: int, grid) -> np.ndarray:
    """Abnar and Zuidema 2020 for one image's [L, heads, T, T]: A_l = 0.5 mean_h + 0.5 I,
    rollout = A_L ... A_1, the class token's row over the patches."""
    eye = np.eye(probabilities.shape[-1])
    rollout = eye
    for each in probabilities:
        rollout = (0.5 * each.mean(axis=0) + 0.5 * eye) @ rollout
    return rollout[0, prefix:].reshape(grid)


def generic_attention(probabilities: np.ndarray, gradients: np.ndarray, prefix: int, grid) -> np.ndarray:
    """Chefer, Gur and Wolf 2021, equations 5-6, for one image: R = I; per layer
    R = R + E_h[(grad A * A)+] R; the class token's row over the patches."""
    relevance = np.eye(probabilities.shape[-1])
    for each, gradient in zip(probabilities, gradients):
        relevance = relevance + np.maximum(gradient * each, 0).mean(axis=0) @ relevance
    return relevance[0, prefix:].reshape(grid)
