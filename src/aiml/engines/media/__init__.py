"""Speech and documents in-process: ``whisper.py`` (speech to text on faster-whisper),
``onnx.py`` (ONNX Runtime models: voice activity with ``vad.py``, OCR and PDFs with
``ocr.py``), ``audio.py`` (audio decoded, bounded). Imports the engines' shared modules only.
"""
