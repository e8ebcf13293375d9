"""Export a TextGenerator as a SavedModel that TensorFlow Serving runs as it is.

`export_saved_model` traces the serving signatures (tfgen/export/module.py), saves them to a
temporary directory beside the target, writes the warmup records, validates the result in a
fresh process that has only TensorFlow and tensorflow-text (tfgen/export/validation.py running
tfgen/export/serving_loader.py), and only then renames it into place as saved_models/NAME/VERSION.
The operator files (models.config, batching_parameters.txt, serve.sh) go beside the versions.
`graph_module` gives the same signatures as a `tf.Module` for use inside the caller's own TF code.
"""
from tfgen.export.exporter import (DEFAULT_STRATEGIES, ExportError, export_saved_model, graph_module,
                                   next_version)
from tfgen.export.validation import run_validation

__all__ = ["export_saved_model", "graph_module", "run_validation", "ExportError", "next_version",
           "DEFAULT_STRATEGIES"]
