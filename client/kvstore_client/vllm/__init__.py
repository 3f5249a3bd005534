"""kvstore inside vLLM: ``KVStoreConnector`` (module ``kvstore_client.vllm.connector``).

Importing this package imports nothing from vLLM; ``connector``, ``meta`` and ``runner`` need it
(the .venv-vllm environment: scripts/setup_vllm.sh). README.md here: how to use it.
"""
