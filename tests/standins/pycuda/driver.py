"""Test-only stand-in of ``pycuda.driver``: fake device memory backed by numpy byte buffers.

Only the part of the API that hgad_edge calls (and a little around it), with the rules of the
real driver that our code could get wrong enforced:

* ``init()`` first; ``Device(i)`` for ``i < Device.count()``; ``retain_primary_context()`` /
  ``push()`` / ``Context.pop()`` / ``detach()`` with a per-thread context stack (CUDA contexts
  are current per thread).
* ``mem_alloc``, ``pagelocked_empty``, ``Stream`` and every copy need a current context.
  ``int(allocation)`` is a fake device address; addresses are spread out with unmapped gaps, so
  ``base + offset`` resolves into the right allocation and anything past its end, before its
  start, freed or never allocated raises ``LaunchError`` ("illegal memory access").
* Asynchronous work (``memcpy_*_async``, TensorRT's ``execute_async_v3``, the device GMM
  kernels) is queued and runs at the next synchronisation (``Stream.synchronize``,
  ``Context.synchronize``, a synchronous copy): a host buffer read before the stream is
  synchronised holds stale data, as on a GPU.
* ``free()`` twice raises; ``free()`` after the allocation's context was detached raises; a
  context detached while it still owns allocations records a leak (``state().leaks``).

Helpers for the other stand-ins (not pycuda API): ``state()`` (memory registry, queue, leaks,
errors), ``reset()``, ``read``/``write`` device memory, ``enqueue``, ``check_stream``.
"""
from __future__ import annotations

import bisect
import itertools
import threading
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np


# ----------------------------------------------------------------------------- errors
class Error(Exception):
    """Base of the driver's errors (``pycuda.driver.Error``)."""


class LogicError(Error):
    """Wrong use of the API (no context, bad ordinal, double free, ...)."""


class LaunchError(Error):
    """An operation touched memory that is not a live allocation (CUDA: illegal address)."""


class MemoryError(Error):  # noqa: A001 - pycuda's name
    """Out of (stand-in) device memory."""


# ----------------------------------------------------------------------------- state
@dataclass
class DeviceSpec:
    name: str = "NVIDIA Standin GPU (onnxruntime CPU)"
    compute_capability: Tuple[int, int] = (8, 7)
    total_memory: int = 8 << 30


BASE_ADDRESS = 0x7F00_0000_0000
ALIGN = 512
GAP = 1 << 16  # unmapped bytes between two allocations


class _Allocation:
    def __init__(self, st: "_State", base: int, size: int, owner, label: str):
        self.state, self.base, self.size, self.owner, self.label = st, base, size, owner, label
        self.buf = np.zeros(size, dtype=np.uint8)
        self.live = True

    def __repr__(self) -> str:
        return f"<allocation 0x{self.base:x} {self.size} B {self.label}>"


class _State:
    def __init__(self, devices: List[DeviceSpec]):
        self.devices = list(devices)
        self.initialized = False
        self.allocs: Dict[int, _Allocation] = {}
        self.bases: List[int] = []
        self.next_address = BASE_ADDRESS
        self.used = 0
        self.queue: List[Tuple[int, str, Callable[[], None]]] = []
        self.streams: Dict[int, "Stream"] = {}
        self.stream_ids = itertools.count(0x5_0000)
        self.local = threading.local()
        self.contexts: List["Context"] = []
        self.leaks: List[str] = []
        self.errors: List[str] = []
        self.counts: Dict[str, int] = {}
        self.lock = threading.RLock()

    # -------------------------------------------------------------- contexts
    @property
    def stack(self) -> List["Context"]:
        if not hasattr(self.local, "stack"):
            self.local.stack = []
        return self.local.stack

    def current(self) -> Optional["Context"]:
        return self.stack[-1] if self.stack else None

    def need_context(self, what: str) -> "Context":
        if not self.initialized:
            raise LogicError(f"{what} failed: initialization error (call pycuda.driver.init() first)")
        ctx = self.current()
        if ctx is None:
            raise LogicError(f"{what} failed: invalid device context (no context is current in this thread)")
        return ctx

    def count(self, key: str) -> None:
        self.counts[key] = self.counts.get(key, 0) + 1

    # -------------------------------------------------------------- memory
    def allocate(self, nbytes: int, owner, label: str) -> _Allocation:
        nbytes = int(nbytes)
        if nbytes <= 0:
            raise LogicError(f"cuMemAlloc failed: invalid argument ({nbytes} bytes)")
        with self.lock:
            if self.used + nbytes > self.devices[0].total_memory:
                raise MemoryError(f"cuMemAlloc failed: out of memory ({nbytes} bytes)")
            base = self.next_address
            self.next_address = (base + nbytes + GAP + ALIGN - 1) // ALIGN * ALIGN
            a = _Allocation(self, base, nbytes, owner, label)
            self.allocs[base] = a
            bisect.insort(self.bases, base)
            self.used += nbytes
            return a

    def release(self, a: _Allocation) -> None:
        with self.lock:
            if not a.live:
                raise LogicError(f"cuMemFree failed: {a} was already freed")
            a.live = False
            del self.allocs[a.base]
            self.bases.remove(a.base)
            self.used -= a.size

    def resolve(self, ptr: int, nbytes: int, what: str) -> Tuple[_Allocation, int]:
        """(allocation, offset) of ``[ptr, ptr + nbytes)``; LaunchError when not all inside one."""
        if isinstance(ptr, bool) or not isinstance(ptr, int):
            raise TypeError(f"{what}: device pointer must be an int, got {type(ptr).__name__}")
        with self.lock:
            i = bisect.bisect_right(self.bases, ptr) - 1
            a = self.allocs[self.bases[i]] if i >= 0 else None
            if a is None or ptr >= a.base + a.size:
                raise LaunchError(f"{what}: illegal memory access at 0x{ptr:x} ({nbytes} bytes): "
                                  "not inside a live allocation")
            off = ptr - a.base
            if off + nbytes > a.size:
                raise LaunchError(f"{what}: illegal memory access at 0x{ptr:x}: {nbytes} bytes from offset {off} "
                                  f"run {off + nbytes - a.size} bytes past the end of {a}")
            return a, off

    def read(self, ptr: int, shape, dtype, what: str = "read") -> np.ndarray:
        dtype = np.dtype(dtype)
        shape = (int(shape),) if isinstance(shape, (int, np.integer)) else tuple(int(s) for s in shape)
        nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        if nbytes == 0:
            return np.zeros(shape, dtype)
        a, off = self.resolve(int(ptr), nbytes, what)
        if off % dtype.itemsize:
            raise LaunchError(f"{what}: misaligned address 0x{ptr:x} for {dtype}")
        return a.buf[off:off + nbytes].view(dtype).reshape(shape).copy()

    def write(self, ptr: int, array, what: str = "write") -> None:
        data = np.ascontiguousarray(array)
        nbytes = data.nbytes
        if nbytes == 0:
            return
        a, off = self.resolve(int(ptr), nbytes, what)
        if off % max(data.dtype.itemsize, 1):
            raise LaunchError(f"{what}: misaligned address 0x{ptr:x} for {data.dtype}")
        a.buf[off:off + nbytes] = data.reshape(-1).view(np.uint8)

    def live(self) -> List[_Allocation]:
        with self.lock:
            return [self.allocs[b] for b in self.bases]

    # -------------------------------------------------------------- streams
    def check_stream(self, handle: int, what: str) -> int:
        handle = int(handle)
        if handle != 0 and handle not in self.streams:
            raise LogicError(f"{what} failed: invalid resource handle (stream 0x{handle:x})")
        return handle

    def enqueue(self, handle: int, label: str, fn: Callable[[], None]) -> None:
        handle = self.check_stream(handle, label)
        with self.lock:
            self.count(label)
            self.queue.append((handle, label, fn))

    def flush(self) -> None:
        """Run every queued operation in order (CUDA: all blocking streams up to now)."""
        while True:
            with self.lock:
                if not self.queue:
                    return
                handle, label, fn = self.queue.pop(0)
            try:
                fn()
            except BaseException:
                with self.lock:
                    self.queue.clear()  # the failed launch poisons what was queued after it
                raise


_STATE = _State([DeviceSpec()])


def state() -> _State:
    """The current stand-in state (memory registry, queue, leaks, errors)."""
    return _STATE


def reset(devices: Optional[List[DeviceSpec]] = None) -> _State:
    """A fresh stand-in: no allocations, contexts or queued work; ``devices`` (default: one)."""
    global _STATE
    _STATE = _State(devices if devices is not None else [DeviceSpec()])
    return _STATE


def read(ptr: int, shape, dtype, what: str = "read") -> np.ndarray:
    return _STATE.read(ptr, shape, dtype, what)


def write(ptr: int, array, what: str = "write") -> None:
    _STATE.write(ptr, array, what)


def enqueue(stream_handle: int, label: str, fn: Callable[[], None]) -> None:
    _STATE.enqueue(stream_handle, label, fn)


def check_stream(stream_handle: int, what: str = "launch") -> int:
    return _STATE.check_stream(stream_handle, what)


# ----------------------------------------------------------------------------- API
def init(flags: int = 0) -> None:  # noqa: ARG001
    _STATE.initialized = True


def get_version() -> Tuple[int, int, int]:
    return (12, 4, 0)


def get_driver_version() -> int:
    return 12040


class Device:
    def __init__(self, ordinal: int):
        st = _STATE
        if not st.initialized:
            raise LogicError("cuDeviceGet failed: initialization error (call pycuda.driver.init() first)")
        ordinal = int(ordinal)
        if not 0 <= ordinal < len(st.devices):
            raise LogicError(f"cuDeviceGet failed: invalid device ordinal {ordinal}")
        self._state, self.ordinal, self._spec = st, ordinal, st.devices[ordinal]

    @staticmethod
    def count() -> int:
        if not _STATE.initialized:
            raise LogicError("cuDeviceGetCount failed: initialization error (call pycuda.driver.init() first)")
        return len(_STATE.devices)

    def name(self) -> str:
        return self._spec.name

    def compute_capability(self) -> Tuple[int, int]:
        return tuple(self._spec.compute_capability)

    def total_memory(self) -> int:
        return int(self._spec.total_memory)

    def pci_bus_id(self) -> str:
        return f"0000:{self.ordinal + 1:02x}:00.0"

    def retain_primary_context(self) -> "Context":
        return Context(self)

    def make_context(self, flags: int = 0) -> "Context":  # noqa: ARG002
        ctx = Context(self)
        ctx.push()
        return ctx

    def __eq__(self, other) -> bool:
        return isinstance(other, Device) and other.ordinal == self.ordinal

    def __hash__(self) -> int:
        return hash(self.ordinal)

    def __repr__(self) -> str:
        return f"<stand-in Device {self.ordinal}: {self.name()}>"


class Context:
    """One retain of the device's primary context (``retain_primary_context``)."""

    _ids = itertools.count(1)

    def __init__(self, device: Device):
        self._state, self.device, self.id = device._state, device, next(Context._ids)
        self.detached = False
        self._state.contexts.append(self)

    def __repr__(self) -> str:
        return f"<stand-in Context {self.id}{' detached' if self.detached else ''}>"

    def push(self) -> None:
        if self.detached:
            raise LogicError("cuCtxPushCurrent failed: context was detached")
        self._state.stack.append(self)

    @staticmethod
    def pop() -> None:
        st = _STATE
        if not st.stack:
            raise LogicError("cuCtxPopCurrent failed: invalid device context (the context stack is empty)")
        st.stack.pop()

    @staticmethod
    def get_current() -> Optional["Context"]:
        return _STATE.current()

    @staticmethod
    def get_device() -> Device:
        return _STATE.need_context("cuCtxGetDevice").device

    @staticmethod
    def synchronize() -> None:
        _STATE.need_context("cuCtxSynchronize")
        _STATE.flush()

    def detach(self) -> None:
        st = self._state
        if self.detached:
            raise LogicError("cuDevicePrimaryCtxRelease failed: context already detached")
        if self in st.stack:
            st.errors.append(f"{self} detached while still current in this thread (pop it first)")
        owned = [a for a in st.live() if a.owner is self]
        for a in owned:
            st.leaks.append(f"{a} still allocated when {self} was detached")
        self.detached = True


class DeviceAllocation:
    def __init__(self, a: _Allocation):
        self._a = a

    def __int__(self) -> int:
        return self._a.base

    __index__ = __int__

    @property
    def size(self) -> int:
        return self._a.size

    def free(self) -> None:
        a = self._a
        ctx = a.owner
        if isinstance(ctx, Context) and ctx.detached and a.live:
            raise LogicError(f"cuMemFree failed: the context of {a} was detached (free device memory before "
                             "releasing its context)")
        a.state.release(a)

    def __repr__(self) -> str:
        return f"<stand-in DeviceAllocation 0x{self._a.base:x} {self._a.size} B{'' if self._a.live else ' freed'}>"


def mem_alloc(nbytes: int) -> DeviceAllocation:
    st = _STATE
    ctx = st.need_context("cuMemAlloc")
    st.count("mem_alloc")
    return DeviceAllocation(st.allocate(int(nbytes), ctx, "pycuda.mem_alloc"))


def mem_get_info() -> Tuple[int, int]:
    st = _STATE
    st.need_context("cuMemGetInfo")
    total = st.devices[0].total_memory
    return total - st.used, total


def pagelocked_empty(shape, dtype, order: str = "C", mem_flags: int = 0) -> np.ndarray:  # noqa: ARG001
    _STATE.need_context("cuMemHostAlloc")
    _STATE.count("pagelocked_empty")
    return np.empty(shape, dtype=dtype, order=order)


def pagelocked_zeros(shape, dtype, order: str = "C", mem_flags: int = 0) -> np.ndarray:
    out = pagelocked_empty(shape, dtype, order, mem_flags)
    out[...] = 0
    return out


def _ptr(x, what: str) -> int:
    if isinstance(x, DeviceAllocation):
        return int(x)
    if isinstance(x, (int, np.integer)) and not isinstance(x, bool):
        return int(x)
    raise TypeError(f"{what}: expected a DeviceAllocation or an int device pointer, got {type(x).__name__}")


def _host(buf, what: str, writable: bool) -> np.ndarray:
    arr = np.asarray(buf) if not isinstance(buf, np.ndarray) else buf
    if not arr.flags.c_contiguous:
        raise TypeError(f"{what}: host buffer is not contiguous (shape {arr.shape}, strides {arr.strides})")
    if writable and not arr.flags.writeable:
        raise TypeError(f"{what}: host buffer is read-only")
    return arr


def _stream(stream) -> int:
    if stream is None:
        return 0
    if isinstance(stream, Stream):
        return stream.handle
    raise TypeError(f"stream must be a pycuda.driver.Stream or None, got {type(stream).__name__}")


def memcpy_htod(dest, src) -> None:
    st = _STATE
    st.need_context("cuMemcpyHtoD")
    d, h = _ptr(dest, "memcpy_htod"), _host(src, "memcpy_htod", False)
    st.flush()
    st.count("htod")
    st.write(d, h.reshape(-1).view(np.uint8), "memcpy_htod")


def memcpy_htod_async(dest, src, stream=None) -> None:
    st = _STATE
    st.need_context("cuMemcpyHtoDAsync")
    d, h = _ptr(dest, "memcpy_htod_async"), _host(src, "memcpy_htod_async", False)
    st.count("htod")
    # reads the host buffer when the stream runs: change it before synchronising and the copy sees it
    st.enqueue(_stream(stream), "memcpy_htod_async", lambda: st.write(d, h.reshape(-1).view(np.uint8),
                                                                       "memcpy_htod_async"))


def memcpy_dtoh(dest, src) -> None:
    st = _STATE
    st.need_context("cuMemcpyDtoH")
    h, s = _host(dest, "memcpy_dtoh", True), _ptr(src, "memcpy_dtoh")
    st.flush()
    st.count("dtoh")
    st.counts["dtoh_bytes"] = st.counts.get("dtoh_bytes", 0) + h.nbytes
    h.reshape(-1).view(np.uint8)[...] = st.read(s, h.nbytes, np.uint8, "memcpy_dtoh")


def memcpy_dtoh_async(dest, src, stream=None) -> None:
    st = _STATE
    st.need_context("cuMemcpyDtoHAsync")
    h, s = _host(dest, "memcpy_dtoh_async", True), _ptr(src, "memcpy_dtoh_async")
    st.count("dtoh")
    st.counts["dtoh_bytes"] = st.counts.get("dtoh_bytes", 0) + h.nbytes

    def run() -> None:
        h.reshape(-1).view(np.uint8)[...] = st.read(s, h.nbytes, np.uint8, "memcpy_dtoh_async")

    st.enqueue(_stream(stream), "memcpy_dtoh_async", run)


def memcpy_dtod_async(dest, src, size: int, stream=None) -> None:
    st = _STATE
    st.need_context("cuMemcpyDtoDAsync")
    d, s = _ptr(dest, "memcpy_dtod_async"), _ptr(src, "memcpy_dtod_async")
    st.enqueue(_stream(stream), "memcpy_dtod_async",
               lambda: st.write(d, st.read(s, int(size), np.uint8, "memcpy_dtod_async"), "memcpy_dtod_async"))


def memcpy_dtod(dest, src, size: int) -> None:
    memcpy_dtod_async(dest, src, size)
    _STATE.flush()


def memset_d8(dest, data: int, count: int) -> None:
    st = _STATE
    st.need_context("cuMemsetD8")
    st.flush()
    st.write(_ptr(dest, "memset_d8"), np.full(int(count), data, np.uint8), "memset_d8")


def memset_d32(dest, data: int, count: int) -> None:
    st = _STATE
    st.need_context("cuMemsetD32")
    st.flush()
    st.write(_ptr(dest, "memset_d32"), np.full(int(count), data, np.uint32), "memset_d32")


class Stream:
    def __init__(self, flags: int = 0):  # noqa: ARG002
        st = self._state = _STATE
        self.context = st.need_context("cuStreamCreate")
        self.handle = next(st.stream_ids)
        st.streams[self.handle] = self

    def synchronize(self) -> None:
        st = self._state
        if self.handle not in st.streams:
            raise LogicError("cuStreamSynchronize failed: invalid resource handle (stream destroyed)")
        if self.context.detached:
            raise LogicError("cuStreamSynchronize failed: the stream's context was detached")
        st.flush()

    def is_done(self) -> bool:
        return not any(h == self.handle for h, _, _ in self._state.queue)

    def __del__(self) -> None:
        st = getattr(self, "_state", None)
        if st is not None:
            st.streams.pop(getattr(self, "handle", None), None)

