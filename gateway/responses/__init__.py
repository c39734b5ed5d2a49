"""`POST /v1/responses` (OpenAI's Responses API, its stateless part): its wire models, its field table, its serving
(one chat-style generation request through the shared request path), its event stream and its route."""
