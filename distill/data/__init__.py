"""Teacher data for distillation: prompts → teacher answers with cached top-k logprobs → filters → training rows."""
