"""An export's decoding program as one StableHLO module per batch and prompt bucket, chosen in the graph.

A jit-compiled function whose input shapes are not static makes TensorFlow lower the whole
decoding loop to HLO, op by op (its tf2xla bridge), at the first request of every shape: 10-30 s
a program for SmolLM2, which a persistent XLA cache cannot skip since it keys the executable by
that HLO. So each (program, batch bucket, prompt bucket) is lowered once, when the export is made,
by the engine (`Engine.lowered`: restored from tfgen's program cache, or traced, lowered and stored
there, the same entries `generate` uses), and the exported graph runs it with `XlaCallModule`
inside a small jit-compiled function, chosen by the padded shape with `tf.switch_case`. A server
then only converts the module to HLO and compiles it (or loads the executable an export ships).

A batch past the largest bucket (`params.bucket_graph` rounds it up to a multiple of it) runs as
chunks of the largest bucket, one after the other; rows never depend on each other, so the output
is the same. When a program cannot be lowered for some bucket (no XLA, an accelerator, a shape that
is not static), `BucketedProgram` gives None and the caller keeps its shape-polymorphic function.
"""
from __future__ import annotations

import contextlib
from typing import Dict, NamedTuple, Optional, Sequence

import tensorflow as tf

from tfgen.decoding import params


class _Bucket(NamedTuple):
    """One bucket's program: the engine's `programs.Lowered`, the jit-compiled function that runs
    it, and its inputs' static shapes."""

    lowered: object
    function: object
    specs: list


class BucketedProgram:
    """One engine program (`Engine.lowered`'s strategy and static arguments) for every bucket.

    Args:
        engine: the generator's `tfgen.decoding.engine.Engine`.
        strategy, static: what `engine.lowered(strategy, examples, *static)` takes (static starts
            with the number of steps).
        batch_buckets, prompt_buckets: the export's buckets, sorted.
        rows_per_prompt: loop-parameter rows per prompt row (beam search: its beams).
    """

    def __init__(self, engine, strategy: str, static: tuple, batch_buckets: Sequence[int],
                 prompt_buckets: Sequence[int], rows_per_prompt: int = 1):
        self.engine, self.strategy, self.static = engine, strategy, tuple(static)
        self.batch_buckets, self.prompt_buckets = tuple(batch_buckets), tuple(prompt_buckets)
        self.rows_per_prompt = int(rows_per_prompt)
        self._buckets: Dict[tuple, Optional[_Bucket]] = {}  # (layout, batch, prompt) -> None: not lowered

    def __call__(self, ids, mask, loop_params) -> Optional[dict]:
        """The program's outputs for padded ids/mask [Bb, Pb] and the loop's parameters (graph
        tensors); None when some bucket's program cannot be lowered."""
        tensors = (ids, mask, loop_params)
        leaves = tf.nest.flatten(tensors)
        present = [leaf for leaf in leaves if leaf is not None]
        flags = [True, True] + tf.nest.flatten(params.per_row(loop_params))  # has the batch axis
        rows = [row for row, leaf in zip(flags, leaves) if leaf is not None]
        layout = repr(tf.nest.map_structure(
            lambda leaf: None if leaf is None else (leaf.dtype.name, leaf.shape.as_list()), tensors))
        buckets = [(b, p) for b in self.batch_buckets for p in self.prompt_buckets]
        if any((layout, b, p) not in self._buckets for b, p in buckets):
            with tf.init_scope(), _uids_aligned():  # lowering runs eagerly, outside the signature
                self._lower(layout, tensors, leaves, present, rows, buckets)
        if any(self._buckets[(layout, b, p)] is None for b, p in buckets):
            return None
        outputs = self._buckets[(layout,) + buckets[0]].lowered.outputs
        flat = self._dispatch(layout, present, rows)
        return tf.nest.pack_sequence_as(outputs, flat)

    # -- lowering (eager) ---------------------------------------------------------------------------
    def _specs(self, present, rows, batch: int, prompt: int):
        """Each input's static shape in one bucket: ids and mask [batch, prompt], a per-row loop
        parameter [batch * rows_per_prompt, ...]; None when another shape is not static."""
        specs = []
        for index, (leaf, row) in enumerate(zip(present, rows)):
            shape = leaf.shape.as_list()
            if index < 2:
                shape = [batch, prompt]
            elif row:
                shape = [batch * self.rows_per_prompt] + shape[1:]
            if None in shape:
                return None
            specs.append(tf.TensorSpec(shape, leaf.dtype))
        return specs

    def _lower(self, layout, tensors, leaves, present, rows, buckets) -> None:
        """Every bucket's module from the engine (one call: the buckets share a trace)."""
        specs = {bucket: self._specs(present, rows, *bucket) for bucket in buckets}
        wanted = [bucket for bucket in buckets if specs[bucket] is not None]
        examples = []
        for bucket in wanted:
            zeros = iter(tf.zeros(spec.shape, spec.dtype) for spec in specs[bucket])
            examples.append(tf.nest.pack_sequence_as(tensors, [None if leaf is None else next(zeros)
                                                               for leaf in leaves]))
        made = self.engine.lowered(self.strategy, examples, *self.static) if examples else []
        lowered = dict(zip(wanted, made))
        for batch, prompt in buckets:
            program = lowered.get((batch, prompt))
            self._buckets[(layout, batch, prompt)] = None if program is None else _Bucket(
                program, _jit_function(program.module, self.engine.programs.variables,
                                       f"{self.strategy}_b{batch}_p{prompt}"), specs[(batch, prompt)])

    # -- dispatch (graph) ---------------------------------------------------------------------------
    def _dispatch(self, layout, present, rows):
        batch = tf.shape(present[0])[0]
        largest = self.batch_buckets[-1]
        known = _static_rows(present, rows, self.rows_per_prompt)
        if known in self.batch_buckets[:-1]:  # a batch fixed when the graph is built: its branch only
            return self._by_prompt(layout, known, present)
        if known is not None and known % largest == 0:
            return self._chunked(layout, present, rows, known // largest)

        def branch(size):
            if size == largest:
                return lambda: self._chunked(layout, present, rows, batch // largest)
            return lambda: self._by_prompt(layout, size, present)

        index = tf.searchsorted(tf.constant(self.batch_buckets, tf.int32), tf.reshape(batch, [1]))[0]
        index = tf.minimum(index, len(self.batch_buckets) - 1)
        return tf.switch_case(index, [branch(size) for size in self.batch_buckets])

    def _by_prompt(self, layout, batch: int, flat):
        """The batch bucket's module for the prompt bucket of ids [batch, P]."""
        length = tf.shape(flat[0])[1]

        def branch(prompt):
            def run():
                made = self._buckets[(layout, batch, prompt)]
                return made.function([tf.reshape(x, spec.shape) for x, spec in zip(flat, made.specs)])
            return run

        if flat[0].shape[1] in self.prompt_buckets:  # a prompt length fixed when the graph is built
            return branch(int(flat[0].shape[1]))()
        index = tf.searchsorted(tf.constant(self.prompt_buckets, tf.int32), tf.reshape(length, [1]))[0]
        index = tf.minimum(index, len(self.prompt_buckets) - 1)
        return tf.switch_case(index, [branch(prompt) for prompt in self.prompt_buckets])

    def _chunked(self, layout, present, rows, chunks):
        """The largest batch bucket's modules over `chunks` consecutive slices of its size."""
        largest = self.batch_buckets[-1]
        modules = [self._buckets[(layout, largest, p)].lowered.module for p in self.prompt_buckets]
        types = modules[0].types
        shapes = [[d if all(m.types[i][1][axis] == d for m in modules) else None
                   for axis, d in enumerate(shape)] for i, (_, shape) in enumerate(types)]
        elems = [tf.reshape(x, tf.concat([[chunks, -1], tf.shape(x)[1:]], 0))
                 for x, row in zip(present, rows) if row]

        def one_chunk(sliced):
            sliced = iter(sliced)
            flat = [next(sliced) if row else x for x, row in zip(present, rows)]
            return self._by_prompt(layout, largest, flat)

        signature = [tf.TensorSpec(shape, tf.as_dtype(dtype)) for (dtype, _), shape in zip(types, shapes)]
        stacked = tf.map_fn(one_chunk, elems, fn_output_signature=signature, parallel_iterations=1)
        return [tf.reshape(x, tf.concat([[-1], tf.shape(x)[2:]], 0)) for x in stacked]


def _jit_function(module, variables, name: str):
    """A jit-compiled function: flat inputs -> the module's flat outputs, on the weights' values."""
    def run(flat):
        return module.call([variable.value() for variable in variables] + list(flat))

    run.__name__ = name
    return tf.function(run, jit_compile=True)


def _static_rows(present, rows, rows_per_prompt: int) -> Optional[int]:
    """The padded batch when some per-row input's shape fixes it in the graph being built, else None."""
    for index, (leaf, row) in enumerate(zip(present, rows)):
        if row and leaf.shape.rank and leaf.shape[0] is not None:
            return int(leaf.shape[0]) // (1 if index < 2 else rows_per_prompt)
    return None


_UID_STEP = 1 << 20  # more than lowering one program's buckets takes (SmolLM2: ~20,000 per program)


@contextlib.contextmanager
def _uids_aligned():
    """Leave TensorFlow's uid counter where it would be had the body taken none.

    TensorFlow names every traced function and captured input after a process-wide counter, and
    XLA's persistent cache keys an executable by those names: an export whose programs were traced
    here (cold) would get other names than one that restored them (warm), and miss the executables
    of every earlier export. So the counter is moved to a multiple of _UID_STEP before the body
    and to the next multiple after it, whatever the body took (up to _UID_STEP; a million uids
    take about 0.25 s to draw).
    """
    from tensorflow.python.framework import ops

    def advance_to_step():
        current = ops.uid()
        for _ in range(-current % _UID_STEP):
            ops.uid()

    advance_to_step()
    yield
    advance_to_step()
