"""Engines on other servers: ``ollama.py`` (the official ollama client) and ``openai.py``
(an OpenAI-compatible server via the official openai client), over ``transport.py`` (a lean
keep-alive HTTP/1.1 transport), ``httpclient.py`` (its httpx client layer) and
``proxies.py`` (HTTP(S)_PROXY/NO_PROXY); ``hosts.py`` spreads one engine over several
hosts. Imports the engines' shared modules only; loads no model files.
"""
