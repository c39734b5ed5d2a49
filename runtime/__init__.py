"""What every kdgate service stands on, imported downward only (tests/test_import_contracts.py):

    contract.py   the backend contract: requests, streamed events, the Backend protocol
    errors.py     the one error tree (GatewayError > UpstreamError > …) and its OpenAI envelope
    backends/     HTTP (vLLM, `kdgate engine`) and local backends, teacher-forced scoring, the factory
    engine/       the local transformers engine with continuous batching
    store/        the SQL record store: shadow and escalation records, student versions, migrations
    settings.py   a backend's settings and the shared HTTP client's

The gateway (the HTTP service) and distill (the trainer) both build on it; it imports neither.
"""
