"""Test-only stand-in of the TensorRT 10 Python API, executing plans with ONNX Runtime (CPU EP).

Exactly the part hgad_edge calls, build side (``export/tensorrt_build.py``) and run side
(``hgad_edge/runtime/tensorrt.py``), with TensorRT's rules that our code could get wrong:

* Build: ``Builder`` → ``create_network(flags)`` → ``OnnxParser.parse_from_file`` →
  ``create_builder_config`` (flags, memory pool, optimization profile, calibration profile,
  ``int8_calibrator``) → ``build_serialized_network`` → a "plan": ``PLAN_MAGIC`` · length ·
  JSON (TensorRT version, device, precision flags, profiles, I/O tensors, calibration) · the
  ONNX model bytes. A dynamic input without a profile, a profile that contradicts the graph,
  INT8 without a calibrator (or one whose base ``__init__`` was not called), FP16/INT8 flags on a
  strongly typed network: the build fails (``None``) with the reason in the logger, as TensorRT.
  INT8 runs the calibrator as TensorRT does: ``read_calibration_cache`` → ``get_batch_size`` →
  ``get_batch`` until ``None`` (the device pointers are read through the pycuda stand-in, so a
  wrong pointer raises) → ``write_calibration_cache``.
* Run: ``Runtime.deserialize_cuda_engine`` refuses (``None``) a plan of another TensorRT
  version or GPU; the engine's I/O is name based; ``set_input_shape`` returns False outside
  the profile (batch > max batch); ``execute_async_v3`` returns False when a shape or an address
  is missing, else queues the inference on the stream: at synchronisation it reads the inputs
  from and writes the outputs into the stand-in device memory at the addresses set, with the
  current shapes, so a wrong address or a buffer too small raises ``LaunchError``.

Numerics: every precision runs the fp32 ONNX graph (the flags are recorded, not emulated).
``HALF_OUTPUTS`` (name prefixes) makes built engines expose those outputs as HALF, for the
fp16-I/O path.
"""
from __future__ import annotations

import enum
import json
import struct
from typing import Dict, List, Optional, Sequence

import numpy as np

from hgad_edge.runtime.trt_compat import version_tuple  # the same version parsing as the code under test
from tests.standins.pycuda import driver

__version__ = "10.3.0"
PLAN_MAGIC = b"STANDIN-TRT-PLAN"
HALF_OUTPUTS: tuple = ()  # output name prefixes built as HALF (tests set it with monkeypatch)
ENGINE_DEVICE_BYTES = 1 << 16  # activation memory of an execution context


# ----------------------------------------------------------------------------- enums
class DataType(enum.IntEnum):
    FLOAT = 0
    HALF = 1
    INT8 = 2
    INT32 = 3
    BOOL = 4
    UINT8 = 5
    FP8 = 6
    BF16 = 7
    INT64 = 8


_NP = {DataType.FLOAT: np.float32, DataType.HALF: np.float16, DataType.INT8: np.int8, DataType.INT32: np.int32,
       DataType.BOOL: np.bool_, DataType.UINT8: np.uint8, DataType.INT64: np.int64}
_FROM_ONNX = {1: DataType.FLOAT, 10: DataType.HALF, 3: DataType.INT8, 6: DataType.INT32, 9: DataType.BOOL,
              2: DataType.UINT8, 7: DataType.INT64}

float32, float16, int32, int8 = DataType.FLOAT, DataType.HALF, DataType.INT32, DataType.INT8


def nptype(dtype: DataType):
    """numpy type of a TensorRT ``DataType``."""
    try:
        return _NP[DataType(dtype)]
    except (KeyError, ValueError):
        raise TypeError(f"Could not resolve TensorRT datatype to an equivalent numpy datatype: {dtype}") from None


class TensorIOMode(enum.IntEnum):
    NONE = 0
    INPUT = 1
    OUTPUT = 2


class NetworkDefinitionCreationFlag(enum.IntEnum):
    EXPLICIT_BATCH = 0  # deprecated in 10: the only mode
    STRONGLY_TYPED = 1


class MemoryPoolType(enum.IntEnum):
    WORKSPACE = 0
    DLA_MANAGED_SRAM = 1
    DLA_LOCAL_DRAM = 2
    DLA_GLOBAL_DRAM = 3
    TACTIC_DRAM = 4


class BuilderFlag(enum.IntEnum):
    FP16 = 0
    INT8 = 1
    DEBUG = 2
    GPU_FALLBACK = 3
    REFIT = 5
    DISABLE_TIMING_CACHE = 6
    TF32 = 7
    SPARSE_WEIGHTS = 8
    OBEY_PRECISION_CONSTRAINTS = 10
    PREFER_PRECISION_CONSTRAINTS = 11
    DIRECT_IO = 12


class CalibrationAlgoType(enum.IntEnum):
    LEGACY_CALIBRATION = 0
    ENTROPY_CALIBRATION = 1
    ENTROPY_CALIBRATION_2 = 2
    MINMAX_CALIBRATION = 3


class Logger:
    class Severity(enum.IntEnum):
        INTERNAL_ERROR = 0
        ERROR = 1
        WARNING = 2
        INFO = 3
        VERBOSE = 4

    INTERNAL_ERROR, ERROR, WARNING, INFO, VERBOSE = Severity

    def __init__(self, min_severity: "Logger.Severity" = Severity.WARNING):
        self.min_severity = min_severity
        self.messages: List[tuple] = []

    def log(self, severity, msg: str) -> None:
        self.messages.append((Logger.Severity(severity), str(msg)))


def _error(logger: Optional[Logger], msg: str) -> None:
    if logger is not None:
        logger.log(Logger.ERROR, msg)


# ----------------------------------------------------------------------------- build side
class ITensor:
    def __init__(self, name: str, shape: Sequence[int], dtype: DataType):
        self.name, self.shape, self.dtype = name, tuple(shape), dtype
        self.is_network_input = False


class INetworkDefinition:
    def __init__(self, flags: int):
        self.flags = int(flags)
        self.onnx_bytes: Optional[bytes] = None
        self.inputs: List[ITensor] = []
        self.outputs: List[ITensor] = []
        self.batch_params: Dict[str, Optional[str]] = {}  # tensor → name of its dynamic first dim

    @property
    def num_inputs(self) -> int:
        return len(self.inputs)

    @property
    def num_outputs(self) -> int:
        return len(self.outputs)

    def get_input(self, i: int) -> ITensor:
        return self.inputs[i]

    def get_output(self, i: int) -> ITensor:
        return self.outputs[i]

    def get_flag(self, flag) -> bool:
        return bool(self.flags & (1 << int(flag)))


class ParserError:
    def __init__(self, desc: str):
        self._desc = desc

    def desc(self) -> str:
        return self._desc

    def __str__(self) -> str:
        return f"In node -1 (parse): {self._desc}"


def _dims(value_info):
    shape = value_info.type.tensor_type.shape
    return [(d.dim_value if d.HasField("dim_value") else -1, d.dim_param or None) for d in shape.dim]


class OnnxParser:
    def __init__(self, network: INetworkDefinition, logger: Logger):
        self.network, self.logger = network, logger
        self._errors: List[ParserError] = []

    @property
    def num_errors(self) -> int:
        return len(self._errors)

    def get_error(self, i: int) -> ParserError:
        return self._errors[i]

    def clear_errors(self) -> None:
        self._errors.clear()

    def parse_from_file(self, path: str) -> bool:
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError as e:
            self._errors.append(ParserError(f"cannot read {path}: {e}"))
            return False
        return self.parse(data, path)

    def parse(self, model: bytes, path: Optional[str] = None) -> bool:  # noqa: ARG002
        import onnx

        try:
            proto = onnx.load_model_from_string(bytes(model))
            onnx.checker.check_model(proto)
        except Exception as e:  # noqa: BLE001 - what TensorRT reports as a parser error
            self._errors.append(ParserError(f"invalid ONNX model: {type(e).__name__}: {e}"))
            return False
        net = self.network
        inits = {i.name for i in proto.graph.initializer}
        for vi, bucket, is_in in ([(v, net.inputs, True) for v in proto.graph.input if v.name not in inits]
                                  + [(v, net.outputs, False) for v in proto.graph.output]):
            elem = vi.type.tensor_type.elem_type
            if elem not in _FROM_ONNX:
                self._errors.append(ParserError(f"{vi.name}: unsupported ONNX type {elem}"))
                return False
            dims = _dims(vi)
            t = ITensor(vi.name, [d for d, _ in dims], _FROM_ONNX[elem])
            t.is_network_input = is_in
            bucket.append(t)
            net.batch_params[vi.name] = dims[0][1] if dims and dims[0][0] == -1 else None
        net.onnx_bytes = bytes(model)
        return True


class IOptimizationProfile:
    def __init__(self):
        self.shapes: Dict[str, tuple] = {}
        self.problems: List[str] = []

    def set_shape(self, input: str, min, opt, max) -> None:  # noqa: A002 - TensorRT's names
        mn, op, mx = (tuple(int(v) for v in s) for s in (min, opt, max))
        if not len(mn) == len(op) == len(mx) or any(not a <= b <= c for a, b, c in zip(mn, op, mx)):
            self.problems.append(f"{input}: invalid profile min {mn} opt {op} max {mx} (needs min <= opt <= max)")
        self.shapes[input] = (mn, op, mx)

    def get_shape(self, input: str):  # noqa: A002
        return [list(s) for s in self.shapes[input]]

    def __bool__(self) -> bool:
        return not self.problems


class IInt8Calibrator:
    def __init__(self):
        self._standin_base_init = True

    def get_algorithm(self) -> CalibrationAlgoType:
        return CalibrationAlgoType.LEGACY_CALIBRATION


class IInt8EntropyCalibrator2(IInt8Calibrator):
    def get_algorithm(self) -> CalibrationAlgoType:
        return CalibrationAlgoType.ENTROPY_CALIBRATION_2


class IBuilderConfig:
    def __init__(self):
        self.flags = {BuilderFlag.TF32}  # on by default, as in TensorRT
        self.pools: Dict[MemoryPoolType, int] = {}
        self.profiles: List[IOptimizationProfile] = []
        self.calibration_profile: Optional[IOptimizationProfile] = None
        self.int8_calibrator: Optional[IInt8Calibrator] = None

    def set_flag(self, flag: BuilderFlag) -> None:
        self.flags.add(BuilderFlag(flag))

    def clear_flag(self, flag: BuilderFlag) -> None:
        self.flags.discard(BuilderFlag(flag))

    def get_flag(self, flag: BuilderFlag) -> bool:
        return BuilderFlag(flag) in self.flags

    def set_memory_pool_limit(self, pool: MemoryPoolType, size: int) -> None:
        if int(size) <= 0:
            raise ValueError(f"memory pool limit must be positive, got {size}")
        self.pools[MemoryPoolType(pool)] = int(size)

    def get_memory_pool_limit(self, pool: MemoryPoolType) -> int:
        return self.pools.get(MemoryPoolType(pool), 1 << 40)

    def add_optimization_profile(self, profile: IOptimizationProfile) -> int:
        if not profile:
            return -1
        self.profiles.append(profile)
        return len(self.profiles) - 1

    def set_calibration_profile(self, profile: IOptimizationProfile) -> bool:
        if not profile:
            return False
        self.calibration_profile = profile
        return True

    def get_calibration_profile(self) -> Optional[IOptimizationProfile]:
        return self.calibration_profile


class IHostMemory(bytes):
    @property
    def nbytes(self) -> int:
        return len(self)


def _session(onnx_bytes: bytes):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(onnx_bytes, sess_options=so, providers=["CPUExecutionProvider"])


def _current_device() -> Dict[str, str]:
    st = driver.state()
    ctx = st.current()
    dev = ctx.device if ctx is not None else driver.Device(0)
    major, minor = dev.compute_capability()
    return {"gpu": dev.name(), "compute_capability": f"{major}.{minor}"}


class Builder:
    def __init__(self, logger: Logger):
        self.logger = logger
        self.platform_has_fast_fp16 = True
        self.platform_has_fast_int8 = True

    def create_network(self, flags: int = 0) -> INetworkDefinition:
        if not isinstance(flags, int) or flags < 0 or flags >> 2:
            raise TypeError(f"create_network: invalid NetworkDefinitionCreationFlags {flags!r}")
        return INetworkDefinition(flags)

    def create_builder_config(self) -> IBuilderConfig:
        return IBuilderConfig()

    def create_optimization_profile(self) -> IOptimizationProfile:
        return IOptimizationProfile()

    # -------------------------------------------------------------- build
    def build_serialized_network(self, network: INetworkDefinition, config: IBuilderConfig) -> Optional[IHostMemory]:
        fail = lambda msg: _error(self.logger, msg)  # noqa: E731
        if network.onnx_bytes is None:
            return fail("build_serialized_network: the network is empty (the ONNX parser did not run)")
        strongly_typed = network.get_flag(NetworkDefinitionCreationFlag.STRONGLY_TYPED)
        if strongly_typed and config.flags & {BuilderFlag.FP16, BuilderFlag.INT8}:
            return fail("BuilderFlag::kFP16/kINT8 cannot be used with a strongly typed network")
        if (BuilderFlag.FP16 in config.flags or BuilderFlag.INT8 in config.flags) and \
                version_tuple(__version__)[:1] >= (11,):
            return fail(f"TensorRT {__version__} has no weakly typed FP16/INT8 builder flags")
        profiles = []
        for prof in config.profiles:
            entry = {}
            for t in network.inputs:
                if t.name not in prof.shapes:
                    if any(d == -1 for d in t.shape):
                        return fail(f"optimization profile lacks the dynamic input {t.name}")
                    entry[t.name] = [list(t.shape)] * 3
                    continue
                mn, op, mx = prof.shapes[t.name]
                for s in (mn, op, mx):
                    if len(s) != len(t.shape) or any(d != -1 and d != v for d, v in zip(t.shape, s)):
                        return fail(f"profile shape {s} of {t.name} contradicts the network's {t.shape}")
                entry[t.name] = [list(mn), list(op), list(mx)]
            extra = set(prof.shapes) - {t.name for t in network.inputs}
            if extra:
                return fail(f"optimization profile names unknown inputs {sorted(extra)}")
            profiles.append(entry)
        if not profiles:
            if any(d == -1 for t in network.inputs for d in t.shape):
                return fail("network has dynamic inputs but no optimization profile was added")
            profiles.append({t.name: [list(t.shape)] * 3 for t in network.inputs})
        sess = _session(network.onnx_bytes)
        probe = {t.name: np.zeros(profiles[0][t.name][0], nptype(t.dtype)) for t in network.inputs}
        probed = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, probe)))
        tensors = []
        for t in network.inputs:
            tensors.append({"name": t.name, "mode": "INPUT", "dtype": int(t.dtype), "shape": list(t.shape),
                            "batch": network.batch_params.get(t.name)})
        in_batch = {network.batch_params.get(t.name) for t in network.inputs} - {None}
        for t in network.outputs:
            shape = list(probed[t.name].shape)
            if network.batch_params.get(t.name) in in_batch and shape:
                shape[0] = -1
            dtype = t.dtype
            if dtype == DataType.FLOAT and any(t.name.startswith(p) for p in HALF_OUTPUTS):
                dtype = DataType.HALF
            tensors.append({"name": t.name, "mode": "OUTPUT", "dtype": int(dtype), "shape": shape})
        calibration = None
        if BuilderFlag.INT8 in config.flags:
            calibration = self._calibrate(network, config, profiles, sess)
            if calibration is None:
                return None
        header = {"tensorrt": __version__, "device": _current_device(), "strongly_typed": strongly_typed,
                  "precision": {"fp16": BuilderFlag.FP16 in config.flags, "int8": BuilderFlag.INT8 in config.flags,
                                "tf32": BuilderFlag.TF32 in config.flags},
                  "workspace": config.get_memory_pool_limit(MemoryPoolType.WORKSPACE),
                  "profiles": profiles, "tensors": tensors, "calibration": calibration}
        head = json.dumps(header).encode()
        return IHostMemory(PLAN_MAGIC + struct.pack("<I", len(head)) + head + network.onnx_bytes)

    def _calibrate(self, network, config, profiles, sess) -> Optional[dict]:
        fail = lambda msg: _error(self.logger, msg)  # noqa: E731
        cal = config.int8_calibrator
        if cal is None:
            return fail("INT8 requested but no calibrator was set (config.int8_calibrator)")
        if not isinstance(cal, IInt8Calibrator) or not getattr(cal, "_standin_base_init", False):
            raise TypeError("the calibrator must derive from trt.IInt8EntropyCalibrator2 and call its __init__")
        prof = config.calibration_profile
        shapes = ({t.name: tuple(prof.shapes[t.name][1]) for t in network.inputs} if prof is not None
                  else {t.name: tuple(profiles[0][t.name][1]) for t in network.inputs})
        cache = cal.read_calibration_cache()
        if cache:
            return {"batches": 0, "from_cache": True, "cache_bytes": len(bytes(cache)), "shapes": shapes}
        batch_size = int(cal.get_batch_size())
        names = [t.name for t in network.inputs]
        if any(shapes[n][0] != batch_size for n in names):
            self.logger.log(Logger.WARNING, f"calibrator batch size {batch_size} differs from the calibration "
                                            f"profile {shapes}")
        absmax: Dict[str, float] = {}
        batches = 0
        while True:
            ptrs = cal.get_batch(names)
            if not ptrs:
                break
            if len(ptrs) != len(names):
                return fail(f"get_batch returned {len(ptrs)} pointers for {len(names)} inputs")
            feeds = {}
            for n, p in zip(names, ptrs):
                t = next(t for t in network.inputs if t.name == n)
                feeds[n] = driver.read(int(p), shapes[n], nptype(t.dtype), f"calibration batch {batches} of {n}")
                absmax[n] = max(absmax.get(n, 0.0), float(np.abs(feeds[n]).max()))
            for o, v in zip(sess.get_outputs(), sess.run(None, feeds)):
                absmax[o.name] = max(absmax.get(o.name, 0.0), float(np.abs(v).max()))
            batches += 1
        if batches == 0:
            return fail("calibration failed: the calibrator returned no batch")
        tag = "".join(f"{int(v):02d}" for v in version_tuple(__version__)[:3])
        lines = [f"TRT-{tag}-EntropyCalibration2"] + [
            f"{k}: {struct.unpack('<I', struct.pack('<f', max(v, 1e-12) / 127.0))[0]:08x}" for k, v in absmax.items()]
        cal.write_calibration_cache(IHostMemory(("\n".join(lines) + "\n").encode()))
        return {"batches": batches, "from_cache": False, "shapes": shapes, "batch_size": batch_size}


# ----------------------------------------------------------------------------- run side
class Runtime:
    def __init__(self, logger: Logger):
        self.logger = logger

    def deserialize_cuda_engine(self, plan) -> Optional["ICudaEngine"]:
        data = bytes(plan)
        if not data.startswith(PLAN_MAGIC):
            _error(self.logger, "IRuntime::deserializeCudaEngine: the plan is not a serialized engine (magic)")
            return None
        (n,) = struct.unpack("<I", data[len(PLAN_MAGIC):len(PLAN_MAGIC) + 4])
        start = len(PLAN_MAGIC) + 4
        header = json.loads(data[start:start + n].decode())
        if header["tensorrt"] != __version__:
            _error(self.logger, f"The engine plan file is not compatible with this version of TensorRT, expecting "
                                f"library version {__version__} got {header['tensorrt']}, please rebuild.")
            return None
        here = _current_device()
        if here != header["device"]:
            _error(self.logger, f"The engine was built for {header['device']}, this device is {here}")
            return None
        return ICudaEngine(header, data[start + n:], self.logger)


class ICudaEngine:
    def __init__(self, header: dict, onnx_bytes: bytes, logger: Logger):
        self.header, self.logger = header, logger
        self._tensors = {t["name"]: t for t in header["tensors"]}
        self._names = [t["name"] for t in header["tensors"]]
        self._session = _session(onnx_bytes)
        self._state = driver.state()
        self._weights = self._state.allocate(max(len(onnx_bytes), 1), "tensorrt", "tensorrt engine weights")

    @property
    def num_io_tensors(self) -> int:
        return len(self._names)

    @property
    def num_optimization_profiles(self) -> int:
        return len(self.header["profiles"])

    @property
    def device_memory_size(self) -> int:
        return ENGINE_DEVICE_BYTES

    def get_tensor_name(self, index: int) -> str:
        return self._names[index]

    def _tensor(self, name: str) -> dict:
        if name not in self._tensors:
            raise KeyError(f"no I/O tensor named {name!r} (has {self._names})")
        return self._tensors[name]

    def get_tensor_mode(self, name: str) -> TensorIOMode:
        if name not in self._tensors:
            return TensorIOMode.NONE
        return TensorIOMode[self._tensors[name]["mode"]]

    def get_tensor_dtype(self, name: str) -> DataType:
        return DataType(self._tensor(name)["dtype"])

    def get_tensor_shape(self, name: str) -> tuple:
        return tuple(self._tensor(name)["shape"])

    def get_tensor_profile_shape(self, name: str, profile_index: int):
        return [tuple(s) for s in self.header["profiles"][profile_index][name]]

    def create_execution_context(self) -> "IExecutionContext":
        return IExecutionContext(self)

    def __del__(self) -> None:
        w = getattr(self, "_weights", None)
        if w is not None and w.live:
            w.state.release(w)


class IExecutionContext:
    def __init__(self, engine: ICudaEngine):
        self.engine = engine  # keeps the engine alive (the bindings do too)
        self._inputs = [n for n in engine._names if engine._tensors[n]["mode"] == "INPUT"]
        self._outputs = [n for n in engine._names if engine._tensors[n]["mode"] == "OUTPUT"]
        self._shapes: Dict[str, Optional[tuple]] = {n: None for n in self._inputs}
        self._addresses: Dict[str, int] = {}
        self._activations = engine._state.allocate(ENGINE_DEVICE_BYTES, "tensorrt", "tensorrt execution context")
        self.executions = 0

    def set_input_shape(self, name: str, shape) -> bool:
        shape = tuple(int(v) for v in shape)
        if name not in self._shapes:
            _error(self.engine.logger, f"setInputShape: {name!r} is not an input tensor")
            return False
        mn, _, mx = self.engine.header["profiles"][0][name]
        if len(shape) != len(mn) or any(not a <= v <= b for a, v, b in zip(mn, shape, mx)):
            _error(self.engine.logger, f"setInputShape: {name} shape {shape} is outside the optimization profile "
                                       f"[{tuple(mn)}, {tuple(mx)}]")
            self._shapes[name] = None
            return False
        self._shapes[name] = shape
        return True

    def _batch(self) -> Optional[int]:
        for n in self._inputs:
            if self._shapes[n] is not None and self.engine._tensors[n].get("batch"):
                return self._shapes[n][0]
        return None

    def get_tensor_shape(self, name: str) -> tuple:
        t = self.engine._tensor(name)
        if t["mode"] == "INPUT":
            return self._shapes[name] if self._shapes[name] is not None else tuple(t["shape"])
        b = self._batch()
        return tuple((b if b is not None else -1) if d == -1 else d for d in t["shape"])

    def set_tensor_address(self, name: str, address: int) -> bool:
        if name not in self.engine._tensors:
            _error(self.engine.logger, f"setTensorAddress: no tensor named {name!r}")
            return False
        if isinstance(address, bool) or not isinstance(address, int):
            raise TypeError(f"set_tensor_address({name!r}): address must be an int, got {type(address).__name__}")
        self._addresses[name] = address
        return True

    def get_tensor_address(self, name: str) -> int:
        return self._addresses.get(name, 0)

    @property
    def all_input_dimensions_specified(self) -> bool:
        return all(s is not None for s in self._shapes.values())

    def execute_async_v3(self, stream_handle: int) -> bool:
        eng = self.engine
        if isinstance(stream_handle, bool) or not isinstance(stream_handle, int):
            raise TypeError(f"execute_async_v3: stream_handle must be an int, got {type(stream_handle).__name__}")
        missing = [n for n, s in self._shapes.items() if s is None]
        if missing:
            _error(eng.logger, f"executeAsyncV3: input shapes not specified (or invalid): {missing}")
            return False
        unset = [n for n in eng._names if not self._addresses.get(n)]
        if unset:
            _error(eng.logger, f"executeAsyncV3: tensor addresses not set: {unset}")
            return False
        inputs = {n: (self._addresses[n], self._shapes[n], nptype(eng.get_tensor_dtype(n))) for n in self._inputs}
        outputs = {n: (self._addresses[n], self.get_tensor_shape(n), nptype(eng.get_tensor_dtype(n)))
                   for n in self._outputs}
        st = eng._state

        def run() -> None:
            feeds = {n: st.read(a, s, dt, f"TensorRT input {n}") for n, (a, s, dt) in inputs.items()}
            names = [o.name for o in eng._session.get_outputs()]
            for n, v in zip(names, eng._session.run(None, feeds)):
                addr, shape, dt = outputs[n]
                if tuple(v.shape) != tuple(shape):
                    raise driver.LaunchError(f"TensorRT output {n}: computed {v.shape}, context shape {shape}")
                st.write(addr, v.astype(dt, copy=False), f"TensorRT output {n}")
            self.executions += 1

        st.enqueue(stream_handle, "execute_async_v3", run)
        return True

    def __del__(self) -> None:
        a = getattr(self, "_activations", None)
        if a is not None and a.live:
            a.state.release(a)
