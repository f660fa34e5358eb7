"""GGUF models on llama.cpp, in-process: ``engine.py`` (prompts, chat templates, requests into
the scheduler), ``native.py`` (a model and a multi-sequence context on llama.cpp's C API),
``scheduler.py`` (continuous batching, with ``stop_strings.py``), ``json_grammar.py`` and
``schema_bounds.py`` (structured outputs as grammars, and what a schema may cost),
``tool_calls.py`` (tool calling on local models). Imports the engines' shared modules only.
"""
