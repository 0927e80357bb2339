"""factpatch inside stock vLLM: a worker extension that writes and restores low-rank weight deltas,
an endpoint plugin that exposes token-protected agent routes, and the swap protocol between them.

Importing this package is cheap and does not import vLLM; the modules that need vLLM import it
themselves.
"""
