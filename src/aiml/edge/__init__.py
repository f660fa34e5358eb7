"""What stands between a client's bytes and the app: the connection guard under uvicorn's
protocol (``connection_guard.py``: header deadline, per-client cap, head caps, body pace),
each request's head and body followed in the bytes (``http_framing.py``), and the answers
it writes itself (``answers.py``). It imports nothing of aiml's: it runs before any route,
any key check and any parser.
"""
