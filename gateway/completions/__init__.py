"""`POST /v1/completions` (OpenAI's legacy completions: text in, text out): its wire models, its field table, its
serving (one raw-prompt generation request through the shared request path) and its route."""
