"""The engine's compiled programs: traced once, kept on disk, restored without tracing in a new process.

Tracing a decoding loop in Python takes seconds (SmolLM2: ~6 s) and XLA compiles it again for
seconds more; both are cached across processes here (`tfgen.cache`, section "programs").

A program is traced with the model's weights as explicit inputs instead of captured variables:
while tracing, each variable of the adapter is bound to the matching input (its resource handle is
swapped for the input's, `_weights_bound`), so the adapters need no change and the traced function
captures nothing. Its FunctionDefs (the loop and every nested body) are renamed after the entry's
key, registered with TensorFlow and called by name with the live weights. The same renamed library
is what an entry stores and what a warm start registers, so a cold and a warm run execute the same
function: identical output, and the same HLO, so TensorFlow's persistent XLA cache (one directory
per process, `tfgen.cache.xla_flag`) finds the executable the cold run compiled. Those executables
are copied into the entry after the first call and linked back in before a restored program runs.

TensorFlow turns a traced function into XLA's HLO (its tf2xla bridge) before it can look the
executable up in its persistent cache, and for a decoding loop that takes longer than loading the
executable (SmolLM2: 6.5 s of a 7.5 s first call). So after tracing, a program is lowered once to
StableHLO (`_lower`: `get_compiler_ir`, stored as a portable artifact) and every process, cold or
warm, runs that module through TensorFlow's `XlaCallModule` op, whose conversion to HLO is a
fraction of the bridge's: a warm start parses the module, finds its executable and runs. A
program XLA cannot express that way (or a GPU process) runs its functions by name instead, and a
module whose first call fails falls back to them.

`Programs.function` is the one place that decides trace or restore. A program that cannot be
stored (a variable that is not a resource variable, or a capture left after binding) still runs,
traced per process as before.
"""
from __future__ import annotations

import collections
import contextlib
import dataclasses
import functools
import hashlib
import json
import os
import re
import threading
import time
from typing import Callable, Dict, List, Optional

import numpy as np
import tensorflow as tf
from tensorflow.core.framework import function_pb2
from tensorflow.python.eager import context, execute

from tfgen import cache
from tfgen._keras_env import warn_xla_cache_off

SECTION = "programs"
_LIBRARY = "program.pb"
_MODULE = "program.stablehlo"  # the program lowered to StableHLO (a portable artifact), when it could be
_WRAPPER = "module.pb"  # the function that reads the weights and runs that module (`_lowered`)
_XLA_PREFIX = "xla-"  # entry file name of a copied XLA executable
_RUNNER = "xla-call-module-1"  # how programs run (part of the key: entries of another runner are not reused)


@dataclasses.dataclass(frozen=True)
class _Module:
    """A program as StableHLO for `XlaCallModule`: the artifact, the op version, and each output's
    dtype name and static shape."""

    data: bytes
    version: int
    types: tuple

    def call(self, inputs):
        from tensorflow.compiler.tf2xla.python import xla

        return xla.call_module(inputs, version=self.version, module=self.data,
                               Tout=[tf.as_dtype(dtype) for dtype, _ in self.types],
                               Sout=[shape for _, shape in self.types], platforms=["CPU"])


@dataclasses.dataclass(frozen=True)
class Lowered:
    """A program as a StableHLO module (`Programs.function(...).lowered`): `module.call` runs it
    inside a jit-compiled function on the weights' values then the flat inputs, in the program's
    order, and gives its flat outputs; `outputs` is their structure (leaves None)."""

    module: _Module
    outputs: object


class _Program:
    """A registered function, called by name with the live weights' handles, then the flat inputs.

    Attributes:
        name, num_outputs, outputs: the function, its output count and structure (leaves None).
        library: its FunctionDefLibrary (what an entry stores).
        entry_has_xla: restored from an entry that already holds its XLA executables.
        module: when the function is a wrapper that reads the weights and runs the traced program's
            StableHLO (`_Module`) with `XlaCallModule`; None: the traced functions themselves.
        traced: (name, library) of the traced functions, when this program runs the module.
        types: each output's (dtype name, shape), for lowering; None when a shape is not static.
    """

    def __init__(self, name: str, num_outputs: int, outputs, library, variables, entry_has_xla=False,
                 module: Optional[_Module] = None, traced=None, types=None):
        self.name, self.num_outputs, self.outputs = name, num_outputs, outputs
        self.library, self.variables, self.entry_has_xla = library, variables, entry_has_xla
        self.module, self.traced, self.types = module, traced, types

    def __call__(self, flat: List[tf.Tensor]):
        inputs = [variable.handle for variable in self.variables] + list(flat)
        outputs = execute.execute(self.name, num_outputs=self.num_outputs, inputs=inputs, attrs=(),
                                  ctx=context.context())
        return tf.nest.pack_sequence_as(self.outputs, outputs)

    def by_name(self) -> "_Program":
        """The traced functions themselves (registered now), for a program that runs its module."""
        name, library = self.traced
        _register(library)
        return _Program(name, self.num_outputs, self.outputs, library, self.variables, self.entry_has_xla,
                        types=self.types)


class Programs:
    """The compiled programs of one adapter.

    Args:
        lm: the adapter (`tfgen.models.base.CausalLM`); its `variables()` are the weights.
        xla: jit-compile the programs.

    Attributes:
        restored: how many programs were restored from the cache instead of traced, by
            (program, first input's shape..., static arguments...).
        compiled: how many programs XLA compiled in this process (a first call that wrote a new
            executable to this process's XLA cache directory; without one, every first call of a
            compiled program), by the same key. A warm start compiles nothing.
        lowered: how many programs run as StableHLO modules (`XlaCallModule`), by the same key.
        seconds: time spent in "trace", "lower", "restore" and "first call" (XLA compile or cache
            load, plus one run), for `benchmarks/startup.py`.
    """

    def __init__(self, lm, xla: bool):
        self.variables = list(lm.variables())
        self.xla = xla
        self.restored: Dict[tuple, int] = collections.Counter()
        self.compiled: Dict[tuple, int] = collections.Counter()
        self.lowered: Dict[tuple, int] = collections.Counter()
        self.seconds: Dict[str, float] = collections.defaultdict(float)
        self._fingerprint = model_fingerprint(lm, self.variables)
        self._loaded: Dict[tuple, Callable] = {}
        self._lock = threading.RLock()  # tracing rebinds the variables: one program call at a time

    def function(self, name: str, body: Callable, num_static: int = 0) -> Callable:
        """A callable like `tf.function(body)`: the last `num_static` arguments are Python values
        (a new value is a new program), the others tensors or nests of them (None allowed)."""

        def call(*args):
            split = len(args) - num_static
            return self._run(name, body, args[:split], tuple(args[split:]))

        def lowered(examples):
            return self._lowered_only(name, body, [args[:len(args) - num_static] for args in examples],
                                      {tuple(args[len(args) - num_static:]) for args in examples})

        call.lowered = lowered  # examples: a list of argument tuples, one per shape
        return call

    def _lowered_only(self, name, body, examples, statics) -> List[Optional["Lowered"]]:
        """The program for each example's inputs (one shape each, the same static arguments) as a
        StableHLO module, restored or lowered and stored, but not run: what an export embeds
        (`tfgen.export.bucketed`). The shapes not in the cache share one trace, with every axis
        on which they differ left unknown, lowered once per shape. None for a shape that cannot be
        lowered (no XLA, an accelerator, an op StableHLO has no form for)."""
        (static,) = statics
        found: List[Optional[Lowered]] = [None] * len(examples)
        missing = []
        with self._lock:
            for index, tensors in enumerate(examples):
                leaves = tf.nest.flatten(tensors)
                flat = [tf.convert_to_tensor(leaf) for leaf in leaves if leaf is not None]
                key = self._key(name, static, _layout(tensors))
                label = (name,) + tuple(flat[0].shape) + static
                start = time.perf_counter()
                program = self._restore(key) if self.xla else None
                self.seconds["restore"] += time.perf_counter() - start
                if program is not None and program.module is not None:
                    self.restored[label] += 1
                    found[index] = Lowered(program.module, program.outputs)
                elif self.xla:
                    missing.append((index, tensors, leaves, flat, key))
            if not missing:
                return found
            _, tensors, leaves, flat, _ = missing[0]
            specs = [tf.TensorSpec([d if all(m[3][i].shape[axis] == d for m in missing) else None
                                    for axis, d in enumerate(value.shape)], value.dtype)
                     for i, value in enumerate(flat)]
            start = time.perf_counter()
            suffix = "_tfgen_" + cache.digest(dict(missing[0][4], shared=repr(specs)))[:12]
            traced = self._trace(None, body, tensors, leaves, specs, static, suffix=suffix)
            self.seconds["trace"] += time.perf_counter() - start
            if not isinstance(traced, _Program):
                return found
            for index, _, _, flat, key in missing:
                start = time.perf_counter()
                program = _lowered(traced, flat, [tf.TensorSpec(v.shape, v.dtype) for v in flat], key)
                self.seconds["lower"] += time.perf_counter() - start
                if program.module is not None:
                    self._store(key, program, _listing(cache.xla_directory()))  # no executable yet
                    found[index] = Lowered(program.module, program.outputs)
            return found

    def _run(self, name, body, tensors, static):
        leaves = tf.nest.flatten(tensors)
        flat = [tf.convert_to_tensor(leaf) for leaf in leaves if leaf is not None]
        specs = [tf.TensorSpec(value.shape, value.dtype) for value in flat]
        layout = _layout(tensors)
        signature = (name, static, layout)
        with self._lock:
            program = self._loaded.get(signature)
            if program is not None:
                return program(flat)
            key = self._key(name, static, layout)
            label = (name,) + tuple(specs[0].shape) + static
            start = time.perf_counter()
            restored = self._restore(key)
            if restored is not None:
                self.restored[label] += 1
                program, stored = restored, restored.entry_has_xla
                self.seconds["restore"] += time.perf_counter() - start
            else:
                program, stored = self._trace(key, body, tensors, leaves, specs, static), False
                self.seconds["trace"] += time.perf_counter() - start
                if isinstance(program, _Program) and self.xla:
                    start = time.perf_counter()
                    program = _lowered(program, flat, specs, key)
                    self.seconds["lower"] += time.perf_counter() - start
            directory = cache.xla_directory()
            before = _listing(directory)
            start = time.perf_counter()
            outputs, program = self._first_call(program, flat)
            self.seconds["first call"] += time.perf_counter() - start
            after = _listing(directory)
            if self.xla and (directory is None or after - before):
                self.compiled[label] += 1
            elif self.xla and not stored and not after:
                self.compiled[label] += 1  # compiled, and TensorFlow persisted nothing
                warn_xla_cache_off()  # TensorFlow read its flags before tfgen set them
            if isinstance(program, _Program):
                self.lowered[label] += program.module is not None
                if not stored:
                    self._store(key, program, before)
            self._loaded[signature] = program
            return outputs

    @staticmethod
    def _first_call(program, flat):
        """Run a program once, to the end; a StableHLO module that fails runs by name instead."""
        with _native_stderr_quiet():  # TensorFlow logs a harmless parse note on an XLA cache hit
            def run(chosen):
                outputs = chosen(flat)
                tf.nest.map_structure(lambda value: value.numpy(), outputs)  # done, not just dispatched
                return outputs

            try:
                return run(program), program
            except (tf.errors.InvalidArgumentError, tf.errors.UnimplementedError, tf.errors.InternalError):
                if not isinstance(program, _Program) or program.module is None:
                    raise
                program = program.by_name()
                return run(program), program

    # -- trace ----------------------------------------------------------------------------------
    def _trace(self, key, body, tensors, leaves, specs, static, suffix=None):
        def arguments(inputs):
            values = iter(inputs)
            return tf.nest.pack_sequence_as(tensors, [None if leaf is None else next(values)
                                                      for leaf in leaves])

        if not _bindable(self.variables):  # trace with captured weights, as tf.function does; not stored
            plain = tf.function(lambda inputs: body(*arguments(inputs), *static), jit_compile=self.xla)
            return plain.get_concrete_function(specs)

        def traced(weights, inputs):
            with _weights_bound(self.variables, weights):
                return body(*arguments(inputs), *static)

        concrete = tf.function(traced, jit_compile=self.xla).get_concrete_function(self.variables, specs)
        if concrete.captured_inputs:
            return lambda flat: concrete(self.variables, flat)  # runs, but is not stored
        library = _library(concrete)
        names = _rename(library, suffix or "_tfgen_" + cache.digest(key)[:12])
        outputs = tf.nest.map_structure(lambda _: None, concrete.structured_outputs)
        _register(library)
        types = [(tensor.dtype.name, tensor.shape.as_list()) for tensor in concrete.outputs]
        static_shapes = all(None not in shape for _, shape in types)
        return _Program(names[concrete.function_def.signature.name], len(concrete.outputs), outputs, library,
                        self.variables, types=tuple(types) if static_shapes else None)

    # -- store and restore ----------------------------------------------------------------------
    def _key(self, name, static, layout) -> dict:
        return dict(cache.environment(), kind="decoding-program", program=name, static=list(static),
                    inputs=layout, model=self._fingerprint, xla=bool(self.xla), runner=_RUNNER)

    def _store(self, key, program: _Program, before) -> None:
        directory = cache.xla_directory()
        traced_name, traced_library = program.traced or (program.name, program.library)
        files = {_LIBRARY: traced_library.SerializeToString()}
        if program.module is not None:
            files[_MODULE] = program.module.data
            files[_WRAPPER] = program.library.SerializeToString()
        try:
            for name in sorted(_listing(directory) - before):
                with open(os.path.join(directory, name), "rb") as handle:
                    files[_XLA_PREFIX + name] = handle.read()
        except OSError:
            return  # the next run compiles again; it never fails this one
        meta = dict(function=traced_name, num_outputs=program.num_outputs, outputs=program.outputs)
        if program.module is not None:
            meta.update(wrapper=program.name, module_version=program.module.version,
                        types=[list(t) for t in program.module.types])
        cache.write_entry(SECTION, key, files, meta)

    def _restore(self, key) -> Optional[_Program]:
        entry = cache.read_entry(SECTION, key)
        if entry is None:
            return None
        try:
            with open(os.path.join(entry.path, _LIBRARY), "rb") as handle:
                library = function_pb2.FunctionDefLibrary.FromString(handle.read())
            meta = entry.meta
            if meta["function"] not in {fdef.signature.name for fdef in library.function}:
                raise ValueError("the entry's function is not in its library")
            xla_files = [name for name in entry.files if name.startswith(_XLA_PREFIX)]
            _link_xla_files(entry.path, xla_files)
            has_xla = bool(xla_files) or cache.xla_directory() is None
            traced = _Program(meta["function"], int(meta["num_outputs"]), meta["outputs"], library,
                              self.variables, entry_has_xla=has_xla)
            if _MODULE not in entry.files:
                _register(library)
                return traced
            with open(os.path.join(entry.path, _MODULE), "rb") as handle:
                types = tuple((str(dtype), [int(n) for n in shape]) for dtype, shape in meta["types"])
                module = _Module(handle.read(), int(meta["module_version"]), types)
            with open(os.path.join(entry.path, _WRAPPER), "rb") as handle:
                wrapper = function_pb2.FunctionDefLibrary.FromString(handle.read())
            if len(types) != traced.num_outputs or meta["wrapper"] not in {f.signature.name for f in wrapper.function}:
                raise ValueError("the entry's module does not match its program")
            _register(wrapper)
            return _Program(meta["wrapper"], traced.num_outputs, traced.outputs, wrapper, self.variables,
                            entry_has_xla=has_xla, module=module, traced=(traced.name, library))
        except Exception:  # noqa: BLE001 - a checked entry that still does not load is rebuilt
            cache.remove_entry(entry)
            return None


# -- lowering to StableHLO ------------------------------------------------------------------------
_MHLO_COPY = re.compile(r"mhlo\.copy (%[\w#.]+) : (tensor<[^>]*>)")
_MODULE_ATTRIBUTES = re.compile(r"^(module @[^\s{]+) attributes \{[^{}]*\}", re.MULTILINE)


def _lowered(program: _Program, flat, specs, key) -> _Program:
    """The traced program run as StableHLO: a wrapper function that reads the weights and calls
    `XlaCallModule` on the module (`_lower`), renamed after the entry like the traced functions
    (so its HLO, and XLA's cache key, are the same in every process) and registered; the program
    itself when it cannot be lowered."""
    module = _lower(program, flat)
    if module is None:
        return program
    variables = program.variables
    try:
        def wrapper(weights, inputs):
            return module.call([weight.value() for weight in weights] + list(inputs))

        concrete = tf.function(wrapper, jit_compile=True).get_concrete_function(variables, specs)
        if concrete.captured_inputs or len(concrete.outputs) != program.num_outputs:
            return program
        library = _library(concrete)
        names = _rename(library, "_tfgen_" + cache.digest(key)[:12] + "_module")
        _register(library)
    except Exception:  # noqa: BLE001 - the traced functions still run
        return program
    return _Program(names[concrete.function_def.signature.name], program.num_outputs, program.outputs, library,
                    variables, module=module, traced=(program.name, program.library), types=program.types)


def _lower(program: _Program, flat) -> Optional[_Module]:
    """The traced program as a StableHLO portable artifact, or None when it cannot be one.

    `get_compiler_ir` gives the HLO TensorFlow would compile as StableHLO text, still carrying two
    MHLO leftovers that no StableHLO consumer reads: the module's MHLO attributes (dropped) and
    `mhlo.copy` (a copy of a loop-carried value; an identity reshape, which XLA removes). Anything
    else that is not StableHLO fails the serialization, and the program then runs by name.
    """
    if _has_accelerator():
        return None
    from tensorflow.compiler.mlir.stablehlo import stablehlo
    from tensorflow.compiler.tf2xla.python import xla

    try:
        with _native_stderr_quiet():
            text = context.context().get_compiler_ir(
                device_name=None, platform_name="CPU", function_name=program.name,
                flat_args=[variable.handle for variable in program.variables] + list(flat),
                captured_inputs=[], stage="stablehlo")
            text = _MHLO_COPY.sub(r"stablehlo.reshape \1 : (\2) -> \2", text.decode("utf-8"))
            text = _MODULE_ATTRIBUTES.sub(r"\1", text, count=1)
            types = program.types or _result_types(text)
            data = stablehlo.serialize_portable_artifact_str(text, stablehlo.get_current_version())
    except Exception:  # noqa: BLE001 - any failure here only means the program runs by name
        return None
    if types is None or len(types) != program.num_outputs:
        return None
    return _Module(bytes(data), xla.call_module_maximum_supported_version(), tuple(types))


_MAIN_RESULTS = re.compile(r"^\s*func\.func (?:public )?@main\(.*\) -> \(?(.*?)\)? \{$", re.MULTILINE)
_TENSOR_TYPE = re.compile(r"tensor<((?:\d+x)*)([a-z]+\d*)>")
_ELEMENT_TYPES = {"i1": "bool", "i8": "int8", "i16": "int16", "i32": "int32", "i64": "int64", "ui8": "uint8",
                  "ui32": "uint32", "ui64": "uint64", "f16": "float16", "bf16": "bfloat16", "f32": "float32",
                  "f64": "float64"}


def _result_types(text: str):
    """Each result's (dtype name, static shape) from the StableHLO text's `main` signature (a
    program traced with axes left unknown, lowered for one shape), or None."""
    match = _MAIN_RESULTS.search(text)
    if match is None:
        return None
    types = []
    for dims, element in _TENSOR_TYPE.findall(match.group(1)):
        if element not in _ELEMENT_TYPES:
            return None
        types.append((_ELEMENT_TYPES[element], [int(d) for d in dims.split("x") if d]))
    return types


@functools.lru_cache(maxsize=None)
def _has_accelerator() -> bool:
    return bool(tf.config.list_logical_devices("GPU"))


# -- helpers --------------------------------------------------------------------------------------
@contextlib.contextmanager
def _weights_bound(variables, weights):
    """While tracing: every read of `variables` reads the traced function's weight inputs instead."""
    saved = [variable._handle for variable in variables]
    try:
        for variable, weight in zip(variables, weights):
            variable._handle = weight.handle
        yield
    finally:
        for variable, handle in zip(variables, saved):
            variable._handle = handle


def _bindable(variables) -> bool:
    return all(isinstance(v, tf.Variable) and hasattr(v, "_handle") for v in variables)


def _layout(tensors) -> str:
    """The inputs' nesting, dtypes and shapes as text (None where a field is absent); dicts by sorted
    key, as `tf.nest` flattens them, whatever order they were built in."""
    def canonical(value):
        if isinstance(value, dict):
            return {key: canonical(value[key]) for key in sorted(value)}
        if isinstance(value, (list, tuple)) and not hasattr(value, "_fields"):
            return type(value)(canonical(item) for item in value)
        return value

    described = tf.nest.map_structure(
        lambda leaf: None if leaf is None else f"{tf.as_dtype(leaf.dtype).name}{list(leaf.shape)}", tensors)
    return repr(canonical(described))


def _library(concrete) -> function_pb2.FunctionDefLibrary:
    """The traced function and every function it calls (loop bodies, branches)."""
    library = function_pb2.FunctionDefLibrary()
    library.function.append(concrete.function_def)
    seen = {concrete.function_def.signature.name}
    for fdef in concrete.graph.as_graph_def().library.function:
        if fdef.signature.name not in seen:
            library.function.append(fdef)
            seen.add(fdef.signature.name)
    return library


def _rename(library, suffix: str) -> Dict[str, str]:
    """Give every function a name derived from the entry (the same in every process, so XLA's HLO
    and its cache key are too) and point every call at the new names."""
    names = {fdef.signature.name: fdef.signature.name + suffix for fdef in library.function}
    for fdef in library.function:
        fdef.signature.name = names[fdef.signature.name]
        for node in fdef.node_def:
            node.op = names.get(node.op, node.op)
            for attr in node.attr.values():
                kind = attr.WhichOneof("value")
                if kind == "func":
                    attr.func.name = names.get(attr.func.name, attr.func.name)
                elif kind == "list":
                    for function in attr.list.func:
                        function.name = names.get(function.name, function.name)
    return names


def _register(library) -> None:
    ctx = context.context()
    for fdef in reversed(library.function):  # callees first
        if not ctx.has_function(fdef.signature.name):
            ctx.add_function_def(fdef)


def _listing(directory: Optional[str]) -> set:
    if directory is None:
        return set()
    try:
        return set(os.listdir(directory))
    except OSError:
        return set()


def _link_xla_files(entry_path: str, names) -> None:
    """Put a restored entry's XLA executables where TensorFlow looks (`cache.link_files`)."""
    directory = cache.xla_directory()
    if directory is not None and names:
        cache.link_files(entry_path, names, directory, strip=_XLA_PREFIX)


@contextlib.contextmanager
def _native_stderr_quiet():
    from tfgen._keras_env import native_stderr_silenced

    if os.environ.get("TF_CPP_MIN_LOG_LEVEL", "").strip() == "0":
        yield
        return
    with native_stderr_silenced():
        yield


def model_fingerprint(lm, variables) -> str:
    """What, besides the weights' values, shapes the traced graph: the adapter's class, its plain
    attributes (sizes, ids, epsilon, numpy constants such as RoPE frequencies), its config and the
    weights' names, shapes and dtypes. Weights' values are inputs, so models that differ only in
    them share programs."""
    parts = [f"{type(lm).__module__}.{type(lm).__qualname__}"]
    for name, value in sorted(vars(lm).items()):
        parts.append(f"{name}={_describe(value)}")
    config = getattr(lm, "config", None)
    if hasattr(config, "to_dict"):
        config = config.to_dict()
    elif dataclasses.is_dataclass(config):
        config = dataclasses.asdict(config)
    parts.append(json.dumps(config, sort_keys=True, default=str))
    parts += [f"{v.name}:{v.dtype.name}{list(v.shape)}" for v in variables]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:32]


def _describe(value) -> str:
    if value is None or isinstance(value, (bool, int, float, str)):
        return repr(value)
    if isinstance(value, np.ndarray):
        return f"{value.dtype}{list(value.shape)}:{hashlib.sha256(value.tobytes()).hexdigest()[:16]}"
    if isinstance(value, (tuple, list)) and all(isinstance(v, (bool, int, float, str)) for v in value):
        return repr(value)
    if isinstance(value, tf.DType):
        return value.name
    if callable(value) and hasattr(value, "__qualname__"):
        return f"{getattr(value, '__module__', '')}.{value.__qualname__}"
    return type(value).__qualname__  # models, layers, blocks: their weights are the variables
