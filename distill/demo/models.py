"""Architectures of the demo teacher and student: standard Llama configs, so vLLM and transformers both load them."""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class DemoArchitecture:
    """The knobs that set a demo model's capacity. Everything else is Llama's default."""

    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    intermediate_size: int
    tie_word_embeddings: bool = True
    max_position_embeddings: int = 512

    def to_config(self, tokenizer):
        from transformers import LlamaConfig

        return LlamaConfig(
            vocab_size=len(tokenizer),
            num_key_value_heads=self.num_attention_heads,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            rope_theta=10_000.0,
            **asdict(self),
        )


# The teacher is deep enough for the multi-hop lookup of two-order tickets (issue sentence -> listed product -> its
# number -> copy). The student has two layers of two heads: enough to copy an order number (a previous-token head
# feeding an induction head), too few parallel lookups for the multi-hop case, so its shortfall comes from capacity.
# (Measured on the demo build: 2x128 with 4 heads reached 91 % and 2x96 with 4 heads 94 %, width was not the limit;
# 2x128 with 2 heads lands at 81 % with the foundation's SFT loop, 89 % with the trainer's SFT recipe and 93 % with
# its KD recipe (the committed student), and its errors are the two-order tickets.)
TEACHER = DemoArchitecture(hidden_size=192, num_hidden_layers=6, num_attention_heads=6, intermediate_size=512)
STUDENT = DemoArchitecture(hidden_size=128, num_hidden_layers=2, num_attention_heads=2, intermediate_size=384)


def build_model(architecture: DemoArchitecture, tokenizer, seed: int):
    import torch
    from transformers import LlamaForCausalLM

    torch.manual_seed(seed)
    return LlamaForCausalLM(architecture.to_config(tokenizer))
