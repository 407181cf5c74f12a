"""facekd: compress face-recognition models by knowledge distillation.

Ranges here, exact pins in requirements.lock (what `make test` / `make demo` install).
torch is capped at the release this project is tested with: an open range pulls a
multi-GB CUDA build on machines without a local wheel.
"""

from pathlib import Path

from setuptools import find_packages, setup

setup(
    name="facekd",
    version="0.1.0",
    description="Knowledge distillation for face recognition: iResNet to MobileFaceNet",
    long_description=Path(__file__).with_name("README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["facekd", "facekd.*"]),
    install_requires=[
        "torch>=2.3,<=2.14.1",
        "torchvision>=0.18,<=0.29.1",
        "facenet-pytorch>=2.5.3",
        "faiss-cpu>=1.7.4",
        "opencv-python-headless>=4.8",
        "albumentations>=2.0",
        "scikit-learn>=1.3",
        "numpy>=1.24",
        "onnx>=1.15",
        "onnxruntime>=1.17",
        "onnxscript>=0.1",
        "tqdm>=4.66",
        "matplotlib>=3.7",
        "pyyaml>=6.0",
        "tensorboard>=2.14",
    ],
    extras_require={"dev": ["pytest>=8", "pytest-timeout>=2.2", "ruff>=0.5"]},
    entry_points={"console_scripts": ["facekd=facekd.cli:main"]},
)
