"""Feature extraction with the real encoders (MiniLM, EfficientNet-Lite0), tiny CLIP / SigLIP, resume."""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from recbole_mmm4rec.data import read_item_features
from recbole_mmm4rec.dataset_scripts.atomic_files import write_atomic_file
from recbole_mmm4rec.dataset_scripts.download_images import image_path
from recbole_mmm4rec.dataset_scripts.extract_features import (
    extract_features,
    item_images,
    item_texts,
    open_image,
)
from recbole_mmm4rec.dataset_scripts.feature_encoders import (
    EfficientNetLite0Encoder,
    SentenceTransformerEncoder,
    TransformersImageEncoder,
    efficientnet_pixels,
    load_encoder,
    pick_device,
)
from tests.image_server import jpeg_bytes, photo

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ITEM_HEADER = ["item_id:token", "title:token_seq", "brand:token", "categories:token_seq", "image_url:token"]
IMAGENET_CATS = {281, 282, 283, 284, 285}  # tabby, tiger cat, Persian, Siamese, Egyptian cat


@pytest.fixture(scope="module")
def minilm():
    return SentenceTransformerEncoder("all-minilm-l6-v2", "cpu")


@pytest.fixture(scope="module")
def efficientnet():
    return EfficientNetLite0Encoder("cpu")


@pytest.fixture
def catalogue(tmp_path):
    """A .item file and its image folder: 4 photos (one a mirror of another), an item whose
    image was never downloaded, and an item without any text."""
    images = tmp_path / "images"
    images.mkdir()
    pictures = {"CAT": photo("chelsea"), "CATFLIP": photo("chelsea")[:, ::-1], "CUP": photo("coffee"),
                "MAN": photo("astronaut")}
    rows = [
        ("CAT", "Tabby cat figurine", "Acme", "Home > Decor"),
        ("CATFLIP", "Cat statue, ceramic", "Acme", "Home > Decor"),
        ("CUP", "Espresso cup", "", "Kitchen > Coffee"),
        ("MAN", "Astronaut poster", "Space Co", "Home > Wall Art"),
        ("LOST", "Laboratory glass beaker 500 ml", "", "Industrial & Scientific > Lab"),
        ("EMPTY", "", "", ""),
    ]
    urls = {item: f"http://127.0.0.1/{item.lower()}.jpg" for item, *_ in rows}
    for item, picture in pictures.items():
        with open(image_path(str(images), item, urls[item]), "wb") as f:
            f.write(jpeg_bytes(np.ascontiguousarray(picture)))
    items = tmp_path / "Cat.item"
    write_atomic_file(str(items), ITEM_HEADER, [(*row, urls[row[0]]) for row in rows])
    return str(items), str(images)


def _cosine(a, b):
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


def test_minilm_text_features(minilm, catalogue, tmp_path):
    items, _ = catalogue
    tokens, texts = item_texts(items)
    assert tokens == ["CAT", "CATFLIP", "CUP", "MAN", "LOST"]
    assert texts[0] == "Tabby cat figurine; Acme; Home > Decor"
    output = str(tmp_path / "Cat.text.npy")
    extract_features(tokens, texts, str, minilm, output, batch_size=2, chunk_rows=3)
    found_tokens, matrix = read_item_features(output, expected_dim=384)
    assert found_tokens == tokens and matrix.shape == (5, 384) and matrix.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(matrix, axis=1), 1.0, atol=1e-5)
    assert _cosine(matrix[0], matrix[1]) > _cosine(matrix[0], matrix[4]) + 0.2  # two cats vs a beaker
    assert not os.path.exists(output + ".partial")

    again = str(tmp_path / "again.npy")
    extract_features(tokens, texts, str, minilm, again, batch_size=2, chunk_rows=3)
    assert open(output, "rb").read() == open(again, "rb").read()


# Encodes a few texts and prints the float32 bytes' SHA-1; the CPU kernels' instruction set and
# thread count come from the environment (read once, when torch starts).
_ENCODE_TEXTS = """
import hashlib, sys
from recbole_mmm4rec.dataset_scripts.feature_encoders import SentenceTransformerEncoder
texts = [f"Movie number {i} ({1990 + i % 10}); Drama, Comedy, a long enough title {i * 7}" for i in range(40)]
print(hashlib.sha1(SentenceTransformerEncoder("all-minilm-l6-v2", "cpu").encode(texts).tobytes()).hexdigest())
"""


def test_text_features_are_the_same_bytes_on_every_cpu():
    """Features are hashed into every benchmark run key: float32 kernels of another instruction
    set (or thread count) changed MiniLM's last bits and so every key; float64 ones round alike."""
    digests = set()
    for cpu in ({"ATEN_CPU_CAPABILITY": "default", "ONEDNN_MAX_CPU_ISA": "SSE41", "OMP_NUM_THREADS": "1"},
                {"OMP_NUM_THREADS": "2"}):
        environment = {key: value for key, value in os.environ.items()
                       if key not in ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "OMP_NUM_THREADS")}
        output = subprocess.run([sys.executable, "-c", _ENCODE_TEXTS], env={**environment, **cpu}, cwd=REPO,
                                capture_output=True, text=True, check=True).stdout
        digests.add(output.split()[-1])
    assert len(digests) == 1


def test_efficientnet_image_features_are_real_imagenet_features(efficientnet, catalogue, tmp_path):
    items, images = catalogue
    tokens, paths = item_images(items, images)
    assert tokens == ["CAT", "CATFLIP", "CUP", "MAN"]  # LOST and EMPTY have no image file
    output = str(tmp_path / "Cat.image.npy")
    extract_features(tokens, paths, open_image, efficientnet, output, batch_size=3, chunk_rows=8)
    _, matrix = read_item_features(output, expected_dim=1280)
    assert matrix.shape == (4, 1280)
    norms = np.linalg.norm(matrix, axis=1)
    assert (matrix >= 0).all() and (norms > 1).all()  # pooled ReLU6 activations
    assert _cosine(matrix[0], matrix[1]) > max(_cosine(matrix[0], matrix[2]), _cosine(matrix[0], matrix[3])) + 0.1

    # The preprocessing fits the weights: the ImageNet head sees a cat in Chelsea.
    pixels = torch.from_numpy(efficientnet_pixels(open_image(paths[0])))[None].to(efficientnet.dtype)
    with torch.no_grad():
        top5 = set(efficientnet.model(pixels).topk(5).indices[0].tolist())
    assert top5 & IMAGENET_CATS

    again = str(tmp_path / "again.npy")
    extract_features(tokens, paths, open_image, efficientnet, again, batch_size=3, chunk_rows=8)
    assert open(output, "rb").read() == open(again, "rb").read()


class _Interrupted(RuntimeError):
    pass


class _CountingEncoder:
    """Wraps an encoder (same name, so the same run), counts batches, can fail at batch n."""

    def __init__(self, encoder, fail_at: int | None = None):
        self.encoder, self.fail_at, self.calls = encoder, fail_at, 0
        self.name, self.dim = encoder.name, encoder.dim

    def encode(self, batch):
        self.calls += 1
        if self.calls == self.fail_at:
            raise _Interrupted("stopped")
        return self.encoder.encode(batch)


def test_an_interrupted_extraction_resumes_to_identical_features(efficientnet, catalogue, tmp_path):
    tokens, paths = item_images(*catalogue)
    reference = str(tmp_path / "reference.npy")
    extract_features(tokens, paths, open_image, efficientnet, reference, batch_size=1, chunk_rows=2)

    output = str(tmp_path / "Cat.image.npy")
    with pytest.raises(_Interrupted):
        extract_features(tokens, paths, open_image, _CountingEncoder(efficientnet, fail_at=4), output,
                         batch_size=1, chunk_rows=2)
    assert not os.path.exists(output)
    assert sorted(os.listdir(output + ".partial")) == ["chunk-000000.npy", "manifest.json"]

    with pytest.raises(ValueError, match=r"\.partial holds an interrupted run with other settings .*'chunk_rows': \(2, 3\)"):
        extract_features(tokens, paths, open_image, efficientnet, output, batch_size=1, chunk_rows=3)

    resumed = _CountingEncoder(efficientnet)
    extract_features(tokens, paths, open_image, resumed, output, batch_size=1, chunk_rows=2)
    assert resumed.calls == 2  # only the second chunk was encoded
    assert open(output, "rb").read() == open(reference, "rb").read()
    assert read_item_features(output)[0] == tokens and not os.path.exists(output + ".partial")


def test_an_undecodable_stored_image_names_the_file(efficientnet, catalogue, tmp_path):
    tokens, paths = item_images(*catalogue)
    with open(paths[2], "wb") as f:
        f.write(b"not a jpeg")
    with pytest.raises(ValueError, match=r"CUP\.jpg: not a decodable image .* run download_images\.py again"):
        extract_features(tokens, paths, open_image, efficientnet, str(tmp_path / "x.npy"), batch_size=4)


def _tiny_vision_config(config_class, **extra):
    return config_class(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                        image_size=32, patch_size=8, **extra)


def _save_tiny_clip(folder):
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(0)
    CLIPVisionModelWithProjection(_tiny_vision_config(CLIPVisionConfig, projection_dim=16)).save_pretrained(folder)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(folder)
    return 16


def _save_tiny_siglip(folder):
    from transformers import SiglipConfig, SiglipImageProcessor, SiglipModel

    torch.manual_seed(0)
    text = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2,
            "vocab_size": 99}
    vision = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
              "image_size": 32, "patch_size": 8}
    SiglipModel(SiglipConfig(text_config=text, vision_config=vision)).save_pretrained(folder)
    SiglipImageProcessor(size={"height": 32, "width": 32}).save_pretrained(folder)
    return 32


@pytest.mark.parametrize("save, model_type", [(_save_tiny_clip, "clip_vision_model"), (_save_tiny_siglip, "siglip")])
def test_clip_and_siglip_from_a_local_folder(save, model_type, catalogue, tmp_path):
    folder = str(tmp_path / model_type)
    dim = save(folder)
    encoder = load_encoder("image", folder, device="auto")
    assert isinstance(encoder, TransformersImageEncoder) and encoder.dim == dim
    assert encoder.name.startswith(f"transformers:{model_type}:")

    tokens, paths = item_images(*catalogue)
    output = str(tmp_path / "Cat.image.npy")
    extract_features(tokens, paths, open_image, encoder, output, batch_size=3, chunk_rows=8)
    _, matrix = read_item_features(output, expected_dim=dim)
    # the rows are the model's own image embeddings
    pixels = encoder.processor(images=[open_image(p) for p in paths], return_tensors="pt")["pixel_values"].to(encoder.dtype)
    with torch.no_grad():
        if model_type == "siglip":
            expected = encoder.model.vision_model(pixel_values=pixels).pooler_output
        else:
            expected = encoder.model(pixel_values=pixels).image_embeds
    np.testing.assert_allclose(matrix, expected.float().numpy(), rtol=1e-4, atol=1e-5)
    assert len({tuple(np.round(row, 4)) for row in matrix}) == 4  # four different images


def test_encoder_choice_errors_and_device(tmp_path):
    with pytest.raises(ValueError, match=r"--encoder 'no/such/model': expected 'efficientnet-lite0' or a local folder"):
        load_encoder("image", "no/such/model", "cpu")
    (tmp_path / "bert").mkdir()
    (tmp_path / "bert" / "config.json").write_text('{"model_type": "bert"}')
    with pytest.raises(ValueError, match=r"expected a CLIP or SigLIP model .* found 'bert'"):
        load_encoder("image", str(tmp_path / "bert"), "cpu")
    with pytest.raises(ValueError, match=r"--modality: expected 'text' or 'image'"):
        load_encoder("audio", None, "cpu")
    assert pick_device("cpu") == "cpu"
    expected = ("cuda",) if torch.cuda.is_available() else ("mps", "cpu")
    assert pick_device("auto") in expected


def test_image_command_line(catalogue, tmp_path):
    items, _ = catalogue
    done = subprocess.run(
        [sys.executable, os.path.join(REPO, "dataset_scripts", "extract_features.py"), "--items", items,
         "--modality", "image", "--chunk-rows", "2", "--device", "cpu"],
        capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert "image: 4 items x 1280 (efficientnet-lite0) written to" in done.stdout
    tokens, matrix = read_item_features(items.replace(".item", ".image.npy"))
    assert tokens == ["CAT", "CATFLIP", "CUP", "MAN"] and matrix.shape == (4, 1280)
