"""Small GGUF files the tests write with the `gguf` writer."""
import numpy as np


def write_architecture_only(path, architecture: str) -> None:
    """A one-tensor GGUF of `architecture` with no hyperparameters: enough for tfgen to read the
    architecture and refuse it."""
    import gguf

    writer = gguf.GGUFWriter(str(path), architecture)
    writer.add_block_count(1)
    writer.add_tensor("token_embd.weight", np.zeros([8, 4], np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
