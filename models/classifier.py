"""Transfer-learning slice classifiers: ImageNet backbone (ResNet50/VGG16) + the MRI paper's head.

`build_classifier` returns a model that takes `(N, H, W, 3)` float slices in [0, 1] and outputs
`(N, 2)` softmax probabilities, **column 0 = P(normal), column 1 = P(tumour)**. The backbone's
own `preprocess_input` (caffe style: 0-255, RGB -> BGR, minus the ImageNet means) runs inside the
model as `ImageNetCaffePreprocess`, so a saved classifier needs no outside recipe.

Layout: input -> `{name}_preprocess` -> backbone (a nested model named "resnet50" or "vgg16", reach
it with `model.get_layer(backbone)`) -> AveragePooling2D(4x4) -> Flatten -> 3 x (Dense(256, relu)
-> Dropout(0.3)) -> Dense(2, softmax, float32). At 256x256x3, fully trainable: ResNet50 25,817,218
parameters (25,764,098 trainable, 53,120 non-trainable BN statistics), VGG16 15,371,330 (all
trainable).

Transfer-learning modes (`trainable`): "all" (the paper), "frozen" (backbone frozen, head trained),
"top:N" or an int N (the top N backbone blocks trainable). A block is a residual block
`convS_blockB_*` of ResNet50 (16 blocks; the stem `conv1`/`pool1` counts as a 17th, lowest one)
or a `blockN_*` stage of VGG16 (5 blocks). Frozen BatchNormalization layers run in inference mode
(Keras 3 does that for `trainable=False`).
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path

import keras
from keras import layers

from models.layers import ImageNetCaffePreprocess

BACKBONES = ("resnet50", "vgg16")
NOTOP_FILES = {
    "resnet50": "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5",
    "vgg16": "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5",
}
HEAD_UNITS = 256
HEAD_DROPOUT = 0.3


class WeightsUnavailableError(RuntimeError):
    """The ImageNet weights could not be downloaded or read from Keras' cache."""


def imagenet_weights_cached(backbone: str) -> bool:
    """Whether Keras' cache (`$KERAS_HOME/models`, default `~/.keras/models`) holds the official
    headless ImageNet file of `backbone`, so `weights="imagenet"` works offline."""
    cache = Path(os.environ.get("KERAS_HOME") or "~/.keras").expanduser() / "models"
    return (cache / NOTOP_FILES[backbone]).is_file()


def _backbone_factory(backbone: str):  # type: ignore[no-untyped-def]
    if backbone == "resnet50":
        return keras.applications.ResNet50
    return keras.applications.VGG16


def _imagenet_backbone(backbone: str, input_shape: tuple[int, int, int]) -> keras.Model:
    try:
        return _backbone_factory(backbone)(
            include_top=False, weights="imagenet", input_shape=input_shape
        )
    except Exception as err:  # Keras raises bare Exception/ValueError for fetch and hash failures
        cache = Path(os.environ.get("KERAS_HOME") or "~/.keras")  # where Keras' cache lives
        raise WeightsUnavailableError(
            f"could not get the ImageNet weights for {backbone} ({err}). Without internet, put "
            f"{NOTOP_FILES[backbone]} (the official Keras file, MD5 checked) in "
            f"{cache.expanduser() / 'models'}/, or pass weights=PATH to a local .h5/.weights.h5 "
            "file, or weights=None for random initialisation"
        ) from None


def load_backbone(
    backbone: str, input_shape: tuple[int, int, int], weights: str | Path | None
) -> keras.Model:
    """Build the headless backbone and load its weights.

    Args:
        backbone: "resnet50" or "vgg16".
        input_shape: `(H, W, 3)`.
        weights: "imagenet" (Keras cache, downloaded if absent), a path to a `.h5`/`.weights.h5`
            file of the headless backbone, or None (random initialisation).

    Returns:
        The backbone model named `backbone`, output `(N, H/32, W/32, 2048 | 512)`.

    Raises:
        WeightsUnavailableError: "imagenet" weights neither cached nor downloadable.
        FileNotFoundError / ValueError: a weights path that is missing or does not fit.
    """
    if isinstance(weights, str) and weights.lower() == "imagenet":
        return _imagenet_backbone(backbone, input_shape)
    model = _backbone_factory(backbone)(include_top=False, weights=None, input_shape=input_shape)
    if weights is None or (isinstance(weights, str) and weights.lower() == "none"):
        return model
    path = Path(weights).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"backbone weights file not found: {path}")
    if path.suffix != ".h5":
        raise ValueError(f"backbone weights must be a .h5 or .weights.h5 file; got {path.name}")
    try:
        model.load_weights(str(path))
    except Exception as err:
        raise ValueError(
            f"{path.name} does not fit a headless {backbone} at {input_shape}: {err}"
        ) from None
    return model


def block_of(backbone: str, layer_name: str) -> str | None:
    """The transfer-learning block a backbone layer belongs to (None for the input layer).

    ResNet50: "stem" for `conv1_*`/`pool1_*`, else `convS_blockB`. VGG16: `blockN`.
    """
    if backbone == "resnet50":
        m = re.match(r"(conv\d_block\d+)_", layer_name)
        if m:
            return m.group(1)
        return "stem" if re.match(r"(conv1|pool1)_", layer_name) else None
    m = re.match(r"(block\d+)_", layer_name)
    return m.group(1) if m else None


def backbone_blocks(backbone_model: keras.Model, backbone: str) -> list[str]:
    """Blocks of the backbone in input-to-output order."""
    blocks: list[str] = []
    for layer in backbone_model.layers:
        block = block_of(backbone, layer.name)
        if block is not None and block not in blocks:
            blocks.append(block)
    return blocks


def parse_trainable(trainable: str | int, n_blocks: int) -> int:
    """Number of top backbone blocks to train: "all" -> n_blocks, "frozen" -> 0, "top:N"/N -> N."""
    if isinstance(trainable, bool):
        raise ValueError(f"trainable must be 'all', 'frozen', 'top:N' or an int; got {trainable!r}")
    if isinstance(trainable, int):
        n = trainable
    elif trainable == "all":
        n = n_blocks
    elif trainable == "frozen":
        n = 0
    elif isinstance(trainable, str) and re.fullmatch(r"top:\d+", trainable):
        n = int(trainable.split(":")[1])
    else:
        raise ValueError(f"trainable must be 'all', 'frozen', 'top:N' or an int; got {trainable!r}")
    if not 0 <= n <= n_blocks:
        raise ValueError(f"the backbone has {n_blocks} blocks; cannot train the top {n}")
    return n


def set_backbone_trainable(model: keras.Model, backbone: str, trainable: str | int) -> list[str]:
    """Freeze or unfreeze the backbone of a classifier in place (head layers stay trainable).

    Args:
        model: a model from `build_classifier`.
        backbone: "resnet50" or "vgg16" (the nested backbone's name).
        trainable: "all", "frozen", "top:N" or an int N.

    Returns:
        The names of the trainable blocks, input-to-output order. Recompile the model afterwards.
    """
    inner = model.get_layer(backbone)
    blocks = backbone_blocks(inner, backbone)
    n = parse_trainable(trainable, len(blocks))
    keep = set(blocks[len(blocks) - n :]) if n else set()
    inner.trainable = True
    for layer in inner.layers:
        layer.trainable = block_of(backbone, layer.name) in keep
    if n == 0:
        inner.trainable = False
    return [b for b in blocks if b in keep]


def build_classifier(
    backbone: str = "resnet50",
    input_shape: Sequence[int] = (256, 256, 3),
    weights: str | Path | None = "imagenet",
    trainable: str | int = "all",
    *,
    name: str | None = None,
) -> keras.Model:
    """Build a backbone + paper-head slice classifier.

    Args:
        backbone: "resnet50" or "vgg16".
        input_shape: `(H, W, 3)`, H and W at least 32.
        weights: "imagenet", a local `.h5`/`.weights.h5` path of the headless backbone, or None.
        trainable: "all", "frozen", "top:N" or an int N (see the module docstring).
        name: model name and head layer prefix (default `f"{backbone}_classifier"`).

    Returns:
        A model mapping `(N, H, W, 3)` float in [0, 1] to `(N, 2)` float32 softmax
        (column 0 = P(normal), column 1 = P(tumour)).
    """
    if backbone not in BACKBONES:
        raise ValueError(f"backbone must be one of {BACKBONES}; got {backbone!r}")
    shape = tuple(int(d) for d in input_shape)
    if len(shape) != 3 or shape[2] != 3 or shape[0] < 32 or shape[1] < 32:
        raise ValueError(f"input_shape must be (H, W, 3) with H, W >= 32; got {tuple(input_shape)}")
    name = name or f"{backbone}_classifier"
    base = load_backbone(backbone, shape, weights)  # type: ignore[arg-type]

    inputs = keras.Input(shape=shape, name=f"{name}_input")
    x = ImageNetCaffePreprocess(name=f"{name}_preprocess")(inputs)
    x = base(x)
    # "same" changes nothing at 256 px (8x8 -> 2x2) and lets smaller test inputs through.
    x = layers.AveragePooling2D(pool_size=4, padding="same", name=f"{name}_avg_pool")(x)
    x = layers.Flatten(name=f"{name}_flatten")(x)
    for i in range(1, 4):
        x = layers.Dense(HEAD_UNITS, activation="relu", name=f"{name}_dense{i}")(x)
        x = layers.Dropout(HEAD_DROPOUT, name=f"{name}_dropout{i}")(x)
    outputs = layers.Dense(2, activation="softmax", dtype="float32", name=f"{name}_probs")(x)
    model = keras.Model(inputs, outputs, name=name)
    set_backbone_trainable(model, backbone, trainable)
    return model
