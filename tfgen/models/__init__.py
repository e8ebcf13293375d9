"""Model adapters: the `CausalLM` interface (base.py), one module per architecture, GGUF reading and
the registry that maps an architecture name to its adapter."""
